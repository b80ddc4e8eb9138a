"""Memory bounds, measured as the peak RSS of a subprocess (VmHWM, reset after warm-up)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import scipy.sparse as sp

import bignmf

MiB = 2**20

SCRIPT = textwrap.dedent("""
    import sys
    from bignmf.cli import main

    def peak():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

    small, warm, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    main(["convert", small, warm, "--no-progress", *args[2:]])  # import and touch every path
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    base = peak()
    status = main(["convert", *args])
    print(status, peak() - base)
""")


def _peak_of_conversion(tmp_path, src, dst, *options):
    rng = np.random.default_rng(0)
    small = sp.random(50, 20, density=0.3, format="coo", random_state=rng)
    sp.save_npz(tmp_path / "small.npz", small, compressed=False)
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path / "small.npz"), str(tmp_path / "warm.zarr"),
           str(src), str(dst), "--no-progress", *options]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    status, peak = out.split()[-2:]
    assert status == "0"
    return int(peak)


def test_unsorted_conversion_stays_under_a_budget_a_quarter_of_the_matrix(tmp_path):
    m, n, nnz = 200_000, 30_000, 8_500_000
    rng = np.random.default_rng(1)
    rows = rng.integers(0, m, nnz, dtype=np.int32)
    cols = rng.integers(0, n, nnz, dtype=np.int32)
    values = rng.random(nnz) + 0.5  # float64, in file order: not sorted by row
    sp.save_npz(tmp_path / "big.npz", sp.coo_matrix((values, (rows, cols)), shape=(m, n)),
                compressed=False)  # fmt: skip
    del rows, cols, values
    matrix_bytes = nnz * (8 + 4) + (m + 1) * 8  # the canonical CSR in memory
    budget = 24 * MiB
    assert matrix_bytes >= 4 * budget
    peak = _peak_of_conversion(
        tmp_path, tmp_path / "big.npz", tmp_path / "A.zarr", "--slab-nnz", "50000",
        "--memory-nnz", "100000", "--chunk-size", "65536", "--block-nnz", "262144",
    )  # fmt: skip
    store = bignmf.open_matrix(tmp_path / "A.zarr")
    assert store.shape == (m, n)
    assert 0.99 * nnz < store.nnz <= nnz  # duplicates summed
    assert peak < budget, f"peak RSS grew by {peak / MiB:.1f} MiB (budget {budget / MiB} MiB)"


FIT_SCRIPT = textwrap.dedent("""
    import sys, warnings
    import bignmf

    warnings.simplefilter("ignore")  # users whose every rating was held out: zeros, and a word

    def peak():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

    small, small_mask, work, path, mask, kind = sys.argv[1:]
    options = {"init": "random", "random_state": 0, "tol": 0, "scheduler": "threads",
               "w_storage": "zarr", "n_inner": 2, "block_nnz": 2**18}
    fit, warm = {
        "zeros": ({"missing": "zeros"}, {"missing": "zeros"}),
        "mask": ({"mask": mask}, {"mask": small_mask}),
        "implicit": ({"weights": "implicit"}, {"weights": "implicit"}),
    }[kind]
    bignmf.nmf(small, 8, max_iter=2, workdir=work + "-warm", **options, **warm)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    base = peak()
    bignmf.nmf(path, 8, max_iter=2, workdir=work, **options, **fit)
    print(peak() - base)
""")


#: fits on the stored entries, off a mask, with implicit feedback's weights
KINDS = ("zeros", "mask", "implicit")


def test_fits_with_unknown_entries_hold_no_more_for_a_4x_larger_matrix(tmp_path):
    from bignmf.datasets import make_ratings

    small = make_ratings(tmp_path / "small.zarr", 2_000, 300, 8, ratings_per_user=10)
    small_held = sp.random(*small.store.shape, density=0.01, format="csr", random_state=3)
    paths = [small.train_path, bignmf.convert(small_held, tmp_path / "small-mask.zarr").path,
             tmp_path / "work"]  # fmt: skip
    peaks, sizes = {}, {}
    for users in (75_000, 300_000):
        ratings = make_ratings(tmp_path / f"r{users}.zarr", users, 2_000, 8,
                               ratings_per_user=30, block_nnz=2**18)  # fmt: skip
        # dense enough that both masks are cut into full blocks of 2**18 entries
        held = sp.random(users, 2_000, density=0.01, format="csr", random_state=2)
        mask = bignmf.convert(held, tmp_path / f"mask{users}.zarr", block_nnz=2**18).path
        store = ratings.store
        sizes[users] = store.nnz * (4 + 4) + (store.shape[0] + 1) * 8  # CSR in memory
        for kind in KINDS:  # each in a process of its own: nothing freed to reuse
            args = [*paths, ratings.train_path, mask, kind]
            cmd = [sys.executable, "-c", FIT_SCRIPT, *map(str, args)]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
            peaks[kind, users] = int(run.stdout.split()[-1])
    print({key: f"{peak / MiB:.1f} MiB" for key, peak in peaks.items()}, sizes)
    # per-thread buffers, one block of A and of the mask, the per-column grams: not the rows
    for kind in KINDS:
        quarter, whole = peaks[kind, 75_000], peaks[kind, 300_000]
        assert whole < 1.4 * quarter, (kind, quarter / MiB, whole / MiB)  # not 4x


STUDY_SCRIPT = textwrap.dedent("""
    import sys
    import bignmf

    def peak():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))

    small, path, work = sys.argv[1:]
    options = {"replicates": 2, "max_iter": 3, "tol": 0, "scheduler": "threads",
               "fits_in_flight": 2, "density_threshold": 2.0}  # noise: keep every spectrum
    bignmf.sweep(small, [3, 4], out=work + "-warm", **options)  # import and touch every path
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    base = peak()
    bignmf.sweep(path, [3, 4], out=work, **options)
    print(peak() - base)
""")


def test_a_study_holds_no_more_for_a_4x_larger_matrix(tmp_path):
    """Fits in flight, their consensus and refits: blocks of A and rows of W, never A."""
    small = sp.random(2000, 4000, density=0.01, format="csr", random_state=3, dtype=np.float32)
    warm = bignmf.convert(small, tmp_path / "small.zarr", block_nnz=2**15, chunk_size=2**13)
    peaks, sizes = {}, {}
    for rows in (25_000, 100_000):
        A = sp.random(rows, 4000, density=0.04, format="csr", random_state=4, dtype=np.float32)
        store = bignmf.convert(A, tmp_path / f"a{rows}.zarr", block_nnz=2**17, chunk_size=2**15)
        sizes[rows] = store.nnz * (4 + 4) + (rows + 1) * 8  # the CSR in memory
        del A
        cmd = [sys.executable, "-c", STUDY_SCRIPT, warm.path, store.path,
               str(tmp_path / f"study{rows}")]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
        peaks[rows] = int(run.stdout.split()[-1])
    print({rows: f"{peak / MiB:.1f} MiB" for rows, peak in peaks.items()}, sizes)
    # what grows is W, in memory on threads: its new rows (75,000 x 4 float32) in a dozen
    # copies at most (three per fit in flight, the fits' results, the consensus's refit)
    w_rows = 75_000 * 4 * 4
    assert peaks[100_000] - peaks[25_000] < 12 * w_rows + 4 * MiB
    assert peaks[100_000] < sizes[100_000] / 2  # and never A
