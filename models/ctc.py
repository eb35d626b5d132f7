"""What the CTC readers (captchas, numbers) share: output 0 is the blank, and greedy decoding
into runs."""

from __future__ import annotations

BLANK = 0  # CTC output 0 is the blank; output k >= 1 is class k - 1


def greedy_runs(best: list[int]) -> list[tuple[int, list[int]]]:
    """Greedy CTC decoding of one item's most likely output per column: per emitted class,
    (its index, the columns of its run). "a a - a b" -> a, a, b: a blank separates doubled classes."""
    runs, prev = [], BLANK
    for t, k in enumerate(best):
        if k != BLANK and k == prev:
            runs[-1][1].append(t)
        elif k != BLANK:
            runs.append((k - 1, [t]))
        prev = k
    return runs
