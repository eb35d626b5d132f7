"""What a digit network does row by row, computed with its own weights: the gates and states of
its last recurrent layer (PyTorch's nn.LSTM / nn.GRU return only the last step's cell state),
the rows that matter (occlusion), and the hidden units that move most.

PyTorch's equations, per step t (x_t: the layer's input, h: its previous hidden state):
  LSTM  i = σ(W_ii x + b_ii + W_hi h + b_hi)   f = σ(W_if x + ... )   g = tanh(W_ig x + ...)
        o = σ(W_io x + ...)   c_t = f ⊙ c_{t-1} + i ⊙ g   h_t = o ⊙ tanh(c_t)
  GRU   r = σ(W_ir x + b_ir + W_hr h + b_hr)   z = σ(W_iz x + ...)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
  RNN   h_t = tanh(W_ih x + b_ih + W_hh h + b_hh)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.digits import DigitRNN

UNITS_SHOWN = 8


@dataclass
class LayerTrace:
    """One recurrent layer run step by step: hidden states (B, T, H) and, per cell type, its gates
    and candidate (B, T, H) each: lstm input/forget/output + candidate + cell; gru reset/update +
    candidate; rnn nothing more."""
    hidden: torch.Tensor
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    candidate: torch.Tensor | None = None
    cell: torch.Tensor | None = None


def _cell_kind(rnn: nn.RNNBase) -> str:
    if isinstance(rnn, nn.LSTM):
        return "lstm"
    if isinstance(rnn, nn.GRU):
        return "gru"
    if isinstance(rnn, nn.RNN) and rnn.nonlinearity == "tanh":
        return "rnn"
    raise ValueError(f"cannot trace {type(rnn).__name__} (nonlinearity {getattr(rnn, 'nonlinearity', None)})")


@torch.inference_mode()
def step_by_step(rnn: nn.RNNBase, x: torch.Tensor) -> list[LayerTrace]:
    """x: (B, T, F) (batch_first, as the digit networks use it) -> one LayerTrace per layer, from
    the module's own weights, one step at a time. Eval-mode arithmetic: no dropout between layers."""
    kind = _cell_kind(rnn)
    if not rnn.batch_first or rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ValueError("step_by_step handles batch_first, one-directional layers without projections")
    b, steps, _ = x.shape
    hidden = rnn.hidden_size
    traces, layer_input = [], x.float()
    for k in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")
        from_input = layer_input @ w_ih.T + b_ih  # (B, T, G*H): the input's share of every gate, all steps
        h = torch.zeros(b, hidden, device=x.device)
        c = torch.zeros(b, hidden, device=x.device)
        outputs: dict[str, list[torch.Tensor]] = {}
        for t in range(steps):
            from_hidden = h @ w_hh.T + b_hh  # (B, G*H)
            if kind == "lstm":
                i, f, g, o = (from_input[:, t] + from_hidden).chunk(4, dim=-1)
                i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                c = f * c + i * g
                h = o * c.tanh()
                step = {"input": i, "forget": f, "output": o, "candidate": g, "cell": c}
            elif kind == "gru":
                xr, xz, xn = from_input[:, t].chunk(3, dim=-1)
                hr, hz, hn = from_hidden.chunk(3, dim=-1)
                r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
                n = (xn + r * hn).tanh()
                h = (1 - z) * n + z * h
                step = {"reset": r, "update": z, "candidate": n}
            else:
                h = (from_input[:, t] + from_hidden).tanh()
                step = {}
            for name, value in {**step, "hidden": h}.items():
                outputs.setdefault(name, []).append(value)
        stacked = {name: torch.stack(values, 1) for name, values in outputs.items()}  # (B, T, H) each
        gate_names = {"lstm": ("input", "forget", "output"), "gru": ("update", "reset"), "rnn": ()}[kind]
        traces.append(LayerTrace(stacked["hidden"], {n: stacked[n] for n in gate_names},
                                 stacked.get("candidate"), stacked.get("cell")))
        layer_input = stacked["hidden"]
    return traces


@torch.inference_mode()
def row_importance(model: DigitRNN, x: torch.Tensor, answer: torch.Tensor, blank: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 28, 28) as the network reads it, answer (B,) class indices -> (B, 28) twice: how much
    the answer's probability drops when that row alone is blanked (set to `blank`, the network
    input of an empty pixel), and how much its log-odds log(p / (1 - p)) drop, which still tells
    rows apart when the answer is so sure (p = 0.9999) that no single row moves its probability.
    One batch of B * 28 occluded copies."""
    b, rows, cols = x.shape
    copies = x.unsqueeze(1).repeat(1, rows, 1, 1)  # (B, 28, 28, 28): copy r of item i
    index = torch.arange(rows, device=x.device)
    copies[:, index, index, :] = blank  # copy r has row r blanked
    def log_p_and_odds(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # logits (..., 10), index (..., 1) -> log p(answer) and its log-odds, both (...)
        log_p = logits.log_softmax(-1)
        answer_lp = log_p.gather(-1, index).squeeze(-1)
        others = log_p.scatter(-1, index, float("-inf")).logsumexp(-1)  # log(1 - p), computed stably
        return answer_lp, answer_lp - others

    base_lp, base_odds = log_p_and_odds(model(x), answer[:, None])  # (B,)
    occluded = model(copies.reshape(b * rows, rows, cols)).reshape(b, rows, -1)
    occ_lp, occ_odds = log_p_and_odds(occluded, answer[:, None, None].expand(b, rows, 1))  # (B, 28)
    return base_lp.exp()[:, None] - occ_lp.exp(), base_odds[:, None] - occ_odds


@torch.inference_mode()
def explain_digits(model: DigitRNN, x: torch.Tensor, answer: torch.Tensor, blank: float) -> list[dict]:
    """Per item, what /predict/digit?explain=true returns (JSON-ready): the last layer's mean gate
    activations, candidate, norms per row; the rows that matter; the 8 units that move most."""
    traces = step_by_step(model.rnn, x)
    last = traces[-1]
    drop, log_drop = row_importance(model, x, answer, blank)
    importance, log_importance = drop.tolist(), log_drop.tolist()
    hidden = last.hidden  # (B, 28, H)
    movers = hidden.std(dim=1).topk(min(UNITS_SHOWN, hidden.shape[-1]), dim=-1).indices  # (B, 8)
    out = []
    for i in range(x.shape[0]):
        out.append({
            "cell": model.config.cell,
            "layer": len(traces), "layers": len(traces),
            "gates": {name: gate[i].mean(-1).tolist() for name, gate in last.gates.items()},
            "candidate": last.candidate[i].mean(-1).tolist() if last.candidate is not None else None,
            "cell_norm": last.cell[i].norm(dim=-1).tolist() if last.cell is not None else None,
            "hidden_norm": hidden[i].norm(dim=-1).tolist(),
            "row_importance": importance[i],
            "row_importance_log_odds": log_importance[i],
            "units": [{"unit": int(u), "values": hidden[i, :, u].tolist()} for u in movers[i].tolist()],
        })
    return out
