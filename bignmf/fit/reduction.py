"""A summation order fixed by the row blocks alone, whoever computes it.

Floating-point sums depend on their order. To give bitwise-identical factors on one thread, many
threads or a cluster — and after a resume on a cluster of another size — the partial sums of the
row blocks are always added in the same binary tree: pairwise, by block number, level by level
(an odd node out is carried to the next level). A task that owns an aligned run of ``2**j``
blocks computes one subtree of it; a partial run at the end yields the nodes it has. Combining
those stacks of nodes in block order (:func:`merge_stacks`) rebuilds exactly the tree a single
sequential pass would have built, while holding at most ``log2(blocks)`` partial sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
Stack = list[tuple[int, T]]


class PairwiseSum:
    """Binary-counter summation: push leaves (or subtree nodes) in order, read the total.

    Parameters
    ----------
    combine : callable
        ``combine(left, right)`` returns their sum; it may reuse either argument.
    """

    def __init__(self, combine: Callable[[T, T], T]):
        self.combine = combine
        self.stack: Stack = []

    def push(self, value: T, level: int = 0) -> None:
        """Add a node of the given level (0 for one block's partial sum)."""
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            value = self.combine(left, value)
            level += 1
        self.stack.append((level, value))

    def extend(self, stack: Iterable[tuple[int, T]]) -> None:
        """Push the nodes another counter holds, in order."""
        for level, value in stack:
            self.push(value, level)

    def total(self) -> T:
        """The sum of everything pushed, folding the remaining nodes from the right."""
        if not self.stack:
            raise ValueError("nothing to sum")
        value = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            value = self.combine(left, value)
        return value


def merge_stacks(stacks: Iterable[Stack], combine: Callable[[T, T], T]) -> Stack:
    """Merge consecutive aligned stacks into one (a node of the reduction tree)."""
    counter = PairwiseSum(combine)
    for stack in stacks:
        counter.extend(stack)
    return counter.stack


def fold_stack(stack: Stack, combine: Callable[[T, T], T]) -> T:
    """The total of a stack of nodes."""
    counter = PairwiseSum(combine)
    counter.stack = list(stack)
    return counter.total()


def aligned_groups(n_blocks: int, n_groups: int) -> list[tuple[int, int]]:
    """Split ``range(n_blocks)`` into at most ``n_groups`` runs of ``2**j`` blocks (last shorter).

    Runs of a power-of-two length starting at multiples of it are subtrees of the reduction tree.
    """
    if n_blocks < 1:
        raise ValueError("no blocks")
    size = 1
    while -(-n_blocks // size) > max(n_groups, 1):
        size *= 2
    return [(start, min(start + size, n_blocks)) for start in range(0, n_blocks, size)]
