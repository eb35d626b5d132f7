"""Digit classifiers that read a 28x28 image as 28 time steps (rows) of 28 features (pixels).

One module, one network: `DigitRNN` with a `DigitRNNConfig` choosing the recurrent cell.
The reference design is `cell="rnn", hidden_size=64, num_layers=7` (plain tanh RNN, last
step into Linear(64, 10)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

NUM_CLASSES = 10
ROWS = 28  # time steps
COLS = 28  # features per step

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class DigitRNNConfig:
    cell: str = "rnn"  # rnn | lstm | gru
    hidden_size: int = 64
    num_layers: int = 7
    dropout: float = 0.0  # between stacked recurrent layers (training only)

    def to_dict(self) -> dict:
        return asdict(self)


class DigitRNN(nn.Module):
    def __init__(self, config: DigitRNNConfig):
        super().__init__()
        if config.cell not in _CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; expected one of {sorted(_CELLS)}")
        self.config = config
        rnn_cls = _CELLS[config.cell]
        kwargs = dict(
            input_size=COLS,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        if config.cell == "rnn":
            kwargs["nonlinearity"] = "tanh"
        self.rnn = rnn_cls(**kwargs)
        self.head = nn.Linear(config.hidden_size, NUM_CLASSES)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Why: a 7-deep tanh RNN trains badly from PyTorch's uniform default. Orthogonal
        # recurrent weights keep the hidden state's norm through 28 steps, and Xavier input
        # weights keep it through the 7 layers. For gated cells, a forget-gate bias of 1
        # (LSTM) lets memory persist from the first updates on.
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                gates = p.shape[0] // self.config.hidden_size
                for g in range(gates):
                    nn.init.orthogonal_(p.data[g * self.config.hidden_size:(g + 1) * self.config.hidden_size])
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p.data)
            elif name.startswith("bias"):
                nn.init.zeros_(p.data)
                if self.config.cell == "lstm":
                    h = self.config.hidden_size
                    p.data[h:2 * h] = 0.5  # forget gate (b_ih + b_hh together give 1.0)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, return_steps: bool = False):
        """x: (B, 28, 28) normalised image, rows as time steps.

        Returns logits (B, 10) read from the last step; with `return_steps` also the
        logits after every row, (B, 28, 10): the same head applied to each step's top-layer
        state, i.e. what the net would answer had it stopped reading there.
        """
        if x.dim() == 4:  # (B, 1, 28, 28) -> (B, 28, 28)
            x = x.squeeze(1)
        out, _ = self.rnn(x)  # (B, 28, H)
        if return_steps:
            step_logits = self.head(out)  # (B, 28, 10)
            return step_logits[:, -1], step_logits
        return self.head(out[:, -1])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
