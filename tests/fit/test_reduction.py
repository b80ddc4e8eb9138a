"""The fixed summation tree: any grouping into aligned tasks gives the same bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bignmf.fit.reduction import PairwiseSum, aligned_groups, fold_stack, merge_stacks


def add(a, b):
    return a + b


def sequential(values):
    counter = PairwiseSum(add)
    for v in values:
        counter.push(v)
    return counter.total()


def reference_tree(values):
    """Level by level pairwise, odd one carried up: the documented canonical order."""
    level = list(values)
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]  # fmt: skip
    return level[0]


def grouped(values, n_groups, split_every):
    stacks = []
    for start, stop in aligned_groups(len(values), n_groups):
        counter = PairwiseSum(add)
        for v in values[start:stop]:
            counter.push(v)
        stacks.append(counter.stack)
    while len(stacks) > 1:
        stacks = [merge_stacks(stacks[i : i + split_every], add)
                  for i in range(0, len(stacks), split_every)]  # fmt: skip
    return fold_stack(stacks[0], add)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70),
    n_groups=st.integers(1, 20),
    split_every=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 2**31),
)
def test_grouping_never_changes_the_bits(n, n_groups, split_every, seed):
    rng = np.random.default_rng(seed)
    # values spanning many magnitudes so that a different order gives different bits
    values = [np.float32(x) for x in rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)]
    expected = reference_tree(values)
    assert sequential(values).tobytes() == expected.tobytes()
    assert grouped(values, n_groups, split_every).tobytes() == expected.tobytes()


def test_order_matters_for_these_values():
    values = [np.float32(1e8), np.float32(1.0), np.float32(-1e8), np.float32(1.0)]
    assert reference_tree(values) != ((values[0] + values[2]) + values[1]) + values[3]


@pytest.mark.parametrize(("n", "groups", "expected"), [
    (1, 4, [(0, 1)]),
    (5, 2, [(0, 4), (4, 5)]),
    (8, 4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
    (9, 4, [(0, 4), (4, 8), (8, 9)]),
])  # fmt: skip
def test_aligned_groups(n, groups, expected):
    assert aligned_groups(n, groups) == expected


def test_empty_total_raises():
    with pytest.raises(ValueError, match="nothing"):
        PairwiseSum(add).total()
