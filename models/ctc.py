"""What the CTC readers (captchas, numbers) share: output 0 is the blank, greedy decoding into
runs, the loss for labels of any length, and the probability of a decoded text."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def padded_ctc_loss(logits: torch.Tensor, input_lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean CTC loss for labels of any length: logits (B, T, C) with output 0 the blank;
    input_lengths (B,) columns per item; targets (B, L) class indices padded with -1."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, C), as ctc_loss wants
    return F.ctc_loss(log_probs, targets.clamp_min(0) + 1, input_lengths.long().cpu(), (targets >= 0).sum(1).cpu(),
                      blank=BLANK, zero_infinity=True)


def text_probability(log_probs: torch.Tensor, classes: list[int]) -> float:
    """The CTC probability of one decoded text: log_probs (T, C) of one item, classes its class
    indices; summed over every column alignment that spells it (the empty text: all blank)."""
    if not classes:
        return float(torch.exp(log_probs[:, BLANK].sum()))
    nll = F.ctc_loss(log_probs.unsqueeze(1), torch.tensor([[k + 1 for k in classes]]),
                     torch.tensor([log_probs.shape[0]]), torch.tensor([len(classes)]), blank=BLANK, reduction="sum",
                     zero_infinity=True)
    return float(torch.exp(-nll))
