"""Parts-based image features: NMF of scikit-learn's handwritten digits, saved as a PNG grid.

NMF writes each image as a non-negative sum of non-negative components, so the components
cannot cancel each other out: they come out as *parts* — strokes, loops, bars — rather than
the whole-digit templates or signed eigen-images of PCA. This example factorizes the 1,797
digits of :func:`sklearn.datasets.load_digits` (8×8 pixels, values 0–16) with
:class:`bignmf.NMF`, bignmf's scikit-learn estimator, and draws the components.

Needs scikit-learn (the dataset, and the estimator: ``pip install 'bignmf-dask[sklearn]'``) and
matplotlib (``pip install 'bignmf-dask[plots]'``). Run it::

    python examples/image_parts_digits.py            # 1,797 digits of 8×8, 16 parts, ~5 s
    python examples/image_parts_digits.py --large    # 8,985 digits of 24×24, 25 parts

``--large`` needs no download either: each digit is upsampled to 24×24 and rotated by −12°,
−6°, 6° and 12°, five images per digit — 8,985 × 576.

It writes, under ``--out`` (default ``./bignmf-examples/digits``):

* ``components.png`` — the k components (rows of H) as images, in a grid;
* ``reconstructions.png`` — some digits (top) and their reconstructions W·H (bottom).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

import bignmf

SMALL = {"components": 16, "max_iter": 500, "zoom": 1}
LARGE = {"components": 25, "max_iter": 1000, "zoom": 3}
ROTATIONS = (-12, -6, 0, 6, 12)  # degrees, for --large


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bignmf-examples/digits", help="output directory")
    parser.add_argument("--large", action="store_true", help="8,985 rotated 24×24 digits")
    parser.add_argument("-k", "--components", type=int, help="number of parts")
    parser.add_argument("--scheduler", default="threads", help="threads (default) or sync")
    return parser.parse_args(argv)


def load_images(zoom: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The digits as rows of pixels (n_images × height·width) and the image shape.

    ``zoom > 1``: each 8×8 digit is upsampled ``zoom`` times (bilinear), and rotated copies
    are added: more and larger images, with the same strokes.
    """
    images = load_digits().images  # (1797, 8, 8), values 0..16
    if zoom == 1:
        return images.reshape(len(images), -1), images.shape[1:]
    big = ndimage.zoom(images, (1, zoom, zoom), order=1)
    copies = [ndimage.rotate(big, angle, axes=(1, 2), reshape=False, order=1)
              for angle in ROTATIONS]  # fmt: skip
    # Interpolation may dip a hair below zero; NMF needs non-negative data.
    stack = np.clip(np.concatenate(copies), 0, None)
    return stack.reshape(len(stack), -1), stack.shape[1:]


def fit_parts(X: np.ndarray, k: int, max_iter: int, scheduler: str):
    """Fit the estimator and return it with W (one row of part weights per image)."""
    # 'nndsvda' starts from an SVD; sparse, localised parts come out of the non-negativity
    # alone, with no regularisation.
    model = bignmf.NMF(n_components=k, init="nndsvda", max_iter=max_iter,
                       random_state=0, scheduler=scheduler)  # fmt: skip
    start = time.perf_counter()
    W = model.fit_transform(X)
    seconds = time.perf_counter() - start
    relative = model.reconstruction_err_ / np.linalg.norm(X)
    print(f"{X.shape[0]:,} images x {X.shape[1]} pixels -> {k} parts: {model.n_iter_} "
          f"iterations in {seconds:.1f}s, "
          f"relative error ‖X − WH‖/‖X‖ = {relative:.3f}")  # fmt: skip
    return model, W


def describe_parts(parts: np.ndarray, weights: np.ndarray) -> None:
    """What makes the components parts: each is small and sparse, each image uses few.

    ``parts`` is H (k × pixels), ``weights`` is W (images × k).
    """
    # A pixel is part of a component when it holds at least 10% of the component's peak.
    support = (parts >= 0.1 * parts.max(axis=1, keepdims=True)).mean(axis=1)
    # The parts an image really uses: those carrying at least 10% of its largest weight.
    used = (weights >= 0.1 * weights.max(axis=1, keepdims=True)).sum(axis=1)
    print(f"each part covers {100 * support.mean():.0f}% of the pixels on average "
          f"(from {100 * support.min():.0f}% to {100 * support.max():.0f}%)")  # fmt: skip
    print(f"each image uses {used.mean():.1f} of the {len(parts)} parts on average "
          f"(median {np.median(used):.0f})")  # fmt: skip


def save_grid(images: np.ndarray, shape: tuple[int, int], path: Path, title: str) -> None:
    """Draw images (one per row of ``images``) in a square-ish grid, each on its own scale."""
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image in zip(axes.flat, images, strict=False):
        ax.imshow(image.reshape(shape), cmap="gray_r", interpolation="nearest")
        ax.set_axis_on()  # a frame around each image, no ticks
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_reconstructions(X, W, H, shape, path: Path, n: int = 10) -> None:
    """Some images (top row) above their reconstructions W·H (bottom row)."""
    picked = np.linspace(0, len(X) - 1, n).astype(int)
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8))
    for column, i in enumerate(picked):
        for row, image in enumerate((X[i], W[i] @ H)):
            axes[row, column].imshow(image.reshape(shape), cmap="gray_r", vmin=0,
                                     vmax=X[i].max(), interpolation="nearest")  # fmt: skip
            axes[row, column].set_axis_off()
    fig.suptitle("digits (top) and their reconstructions W·H (bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = LARGE if args.large else SMALL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    X, shape = load_images(size["zoom"])
    k = args.components or size["components"]
    model, W = fit_parts(X, k, size["max_iter"], args.scheduler)
    H = model.components_
    describe_parts(H, W)
    save_grid(H, shape, out / "components.png", f"the {k} NMF parts of the digits (rows of H)")
    save_reconstructions(X, W, H, shape, out / "reconstructions.png")
    print(f"saved {out / 'components.png'} and {out / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
