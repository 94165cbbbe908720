"""Dealing work to the ranks of a conversion."""

from __future__ import annotations


def split_by_size(sizes: list[int], ranks: int) -> list[list[int]]:
    """Deal items to ranks, biggest first, each to the least loaded rank.

    Deterministic (ties go to the lower rank); each rank's list is sorted.
    """
    load = [0] * ranks
    owned: list[list[int]] = [[] for _ in range(ranks)]
    for item in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owned[rank].append(item)
        load[rank] += max(sizes[item], 1)
    return [sorted(items) for items in owned]
