"""What the captcha trainers share (training.captcha, training.captcha_soup, training.captcha_o0):
the seeds of the validation and held-out test captchas, the joint model, scoring, the batch
sources (pools, folders, fresh captchas) and the manifest sections of a reader."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.captcha_common import CAPTCHA_LENGTH, CHARSET, decode_label, score_texts
from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig
from models.captcha_seq2seq import CaptchaSeq2Seq, CaptchaSeq2SeqConfig
from models.preprocess import to_captcha_tensor
from training.captcha_data import fresh_loader, load_pool
from training.loop import Shuffled, ShuffledSource

TEST_SEED = 424242  # the held-out captchas behind the manifest's metrics; never trained on
VAL_SEED = 31337  # per-epoch validation and every choice made on validation

GENERATOR = ("captcha.image.ImageCaptcha() defaults (160x60, DroidSansMono 42/50/56), 4 characters from 0-9a-zA-Z, "
             "labels lower-cased")
OUTPUTS = {"ctc": "CTC: 37 per column, 0 = blank, k = charset[k-1]; greedy: argmax, merge repeats, drop blanks",
           "seq2seq": "4 steps x 36 classes (charset order); argmax per step"}


class JointCaptcha(torch.nn.Module):
    """Training-only: one conv + encoder shared by both readers. The seq2seq decoder and a CTC
    head both read the encoded columns; the loss is their sum. `heads` are two complete,
    standalone networks (CaptchaSeq2Seq, CaptchaCTC) sharing those modules, exported as is."""

    def __init__(self, seq2seq: CaptchaSeq2Seq):
        super().__init__()
        cfg = seq2seq.config
        self.seq2seq = seq2seq
        self.ctc = CaptchaCTC(CaptchaCTCConfig(height=cfg.height, width=cfg.width, channels=list(cfg.channels),
                                               hidden_size=cfg.encoder_hidden, num_layers=cfg.encoder_layers,
                                               dropout=cfg.dropout))
        self.ctc.conv, self.ctc.rnn = seq2seq.conv, seq2seq.encoder  # shared, not copied

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.seq2seq.encode(x)  # (B, T, 2He)
        return self.seq2seq.emit(enc), self.ctc.head(self.ctc.dropout(enc))  # (B, 4, 36), (B, T, 37)

    def loss(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        s2s_logits, ctc_logits = outputs
        return self.seq2seq.loss(s2s_logits, targets) + self.ctc.loss(ctc_logits, targets)

    @property
    def heads(self) -> dict[str, torch.nn.Module]:
        return {"ctc": self.ctc, "seq2seq": self.seq2seq}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(variant: str, *, height: int, width: int, channels: list[int], hidden_size: int, num_layers: int,
                decoder_hidden: int, attention: bool, dropout: float) -> torch.nn.Module:
    """A fresh reader (`ctc`, `seq2seq`) or both on one conv + encoder (`joint`)."""
    if variant == "ctc":
        return CaptchaCTC(CaptchaCTCConfig(height=height, width=width, channels=channels, hidden_size=hidden_size,
                                           num_layers=num_layers, dropout=dropout))
    seq2seq = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(height=height, width=width, channels=channels,
                                                  encoder_hidden=hidden_size, encoder_layers=num_layers,
                                                  decoder_hidden=decoder_hidden, attention=attention,
                                                  dropout=dropout))
    return JointCaptcha(seq2seq) if variant == "joint" else seq2seq


def heads_of(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The exportable readers of a model: both of a JointCaptcha, else the model itself."""
    return model.heads if isinstance(model, JointCaptcha) else {model.config.variant: model}


@torch.inference_mode()
def evaluate(model, images: np.ndarray, labels: np.ndarray, device, batch_size: int = 500) -> dict:
    """images: uint8 (N, H, W) model-input pixels; labels int (N, 4) -> full-string and
    per-character accuracy (and the loss)."""
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, len(images), batch_size):
        x = to_captcha_tensor(np.asarray(images[i:i + batch_size])).to(device)
        y = torch.as_tensor(np.asarray(labels[i:i + batch_size])).to(device)
        logits = model(x)
        loss_sum += model.loss(logits, y).item() * len(y)
        # A seq2seq with test-time shifts is scored as it serves: on its averaged views.
        tta = getattr(getattr(model, "config", None), "test_time_shifts", None)
        preds += model.decode(model.log_probs(x) if tta else logits)
    truth = [decode_label(row) for row in np.asarray(labels)]
    scores = score_texts(preds, truth)
    scores["loss"] = loss_sum / len(images)
    scores["errors"] = [(t, p) for t, p in zip(truth, preds) if t != p]
    return scores


def random_shift(x: torch.Tensor, gen: torch.Generator, max_dx: float = 3.0, max_dy: float = 2.0,
                 scale: tuple[float, float] = (0.93, 1.07)) -> torch.Tensor:
    """x: (B, 1, H, W) float pixels -> the same, each shifted/scaled a little (border
    pixels repeat). Only for pools and folders, where each captcha is seen several times."""
    b, _, h, w = x.shape

    def u(lo, hi):
        return torch.rand(b, generator=gen) * (hi - lo) + lo

    s = u(*scale)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    theta[:, 0, 2] = u(-max_dx, max_dx) * 2 / w
    theta[:, 1, 2] = u(-max_dy, max_dy) * 2 / h
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ArraySource(ShuffledSource):
    """Random full batches from in-memory uint8 arrays, each pass a fresh permutation. With
    `reload`, every new pass first asks it for the arrays again: a pool folder that is still
    being filled (`captcha_data pool` shards) then grows under a running training."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, gen: torch.Generator,
                 reload: Callable[[int], tuple[np.ndarray, np.ndarray] | None] | None = None):
        self.images, self.labels, self.reload = images, labels, reload
        self.order = Shuffled(len(images), batch_size, gen, drop_last=True)
        self.order.new_pass = self._new_pass

    def _new_pass(self) -> None:
        grown = self.reload(len(self.images)) if self.reload is not None else None
        if grown is not None:
            self.images, self.labels = grown
            print(f"pool grew to {len(self.images):,} captchas", flush=True)
        self.order.resize(len(self.images))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next().sort().values.numpy()
        return torch.from_numpy(self.images[idx]), torch.from_numpy(self.labels[idx])


class FreshSource:
    """Batches of new captchas from `workers` generator processes. Resumed, it draws from a
    seed of its own (seed and batches drawn before), not the captchas it already gave."""

    def __init__(self, seed: int, batch_size: int, workers: int, height: int, width: int):
        self.seed, self.batch_size, self.workers, self.height, self.width = seed, batch_size, workers, height, width
        self.batches, self.loader = 0, None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loader is None:
            self.loader = iter(fresh_loader(self.seed, self.batch_size, self.workers, self.height, self.width))
        self.batches += 1
        return next(self.loader)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.batches, self.loader = int(state["seed"]) * 100003 + int(state["batches"]), 0, None


class ReaderBatches:
    """A source of (uint8 pixels (B, H, W), labels (B, 4)) -> the readers' input: optionally
    shifted/scaled at random, standardised, channels-last on `device`."""

    def __init__(self, raw, gen: torch.Generator, augment: bool, device: torch.device):
        self.raw, self.gen, self.augment, self.device = raw, gen, augment, device

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, y = self.raw.next()  # uint8 (B, H, W), int64 (B, 4)
        if self.augment:
            pixels = random_shift(pixels.float().unsqueeze(1), self.gen).squeeze(1)
        x = to_captcha_tensor(pixels).to(self.device).contiguous(memory_format=torch.channels_last)  # (B, 1, H, W)
        return x, y.to(self.device)

    def state_dict(self) -> dict:
        return self.raw.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.raw.load_state_dict(state)


def pool_folders(paths: list[str]) -> list[Path]:
    """Each path is a pool folder (meta.json) or a folder of them; only complete pools count
    (`write_pool` writes meta.json last)."""
    folders = []
    for p in map(Path, paths):
        folders += [p] if (p / "meta.json").is_file() else sorted(q.parent for q in p.glob("*/meta.json"))
    return folders


def load_pools(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    folders = pool_folders(paths)
    if not folders:
        raise SystemExit(f"no pools (folders with meta.json) under {paths}")
    parts = [load_pool(f) for f in folders]
    images = np.concatenate([np.asarray(p[0]) for p in parts])  # into RAM: random gathers stay cheap
    labels = np.concatenate([np.asarray(p[1]) for p in parts])
    return images, labels, [p[2] for p in parts]


def reader_input(height: int, width: int) -> dict:
    """A reader manifest's input contract (read by models.preprocess.prepare_captcha)."""
    return {
        "height": height, "width": width, "channels": 1,
        "mode": "grayscale (PIL 'L'); transparent pixels composited on white",
        "resize": f"PIL bilinear (antialiased) from any size to {width}x{height}",
        "normalize": "per image: (x - mean) / max(std, 1) over its 0..255 grey levels",
        "layout": f"read column by column: {width // 4} columns of 4 px",
    }


def reader_sections(head: str) -> dict:
    """A reader manifest's captcha sections: charset, length, case, outputs, generator."""
    return {"charset": CHARSET, "length": CAPTCHA_LENGTH, "case_insensitive": True, "outputs": OUTPUTS[head],
            "generator": GENERATOR}


def test_metrics(test: dict, samples: int, seed: int | None = None) -> dict:
    """A reader manifest's metrics from `evaluate` on the held-out test captchas."""
    return {"full_string_accuracy": round(test["full_string_accuracy"], 5),
            "char_accuracy": round(test["char_accuracy"], 5),
            "test_loss": round(test["loss"], 5),
            "test_samples": samples,
            **({"test_seed": seed} if seed is not None else {}),
            "test_errors": [f"{t}->{p}" for t, p in test["errors"][:50]]}


def pixel_batches(pixels: np.ndarray, batch_size: int, device: torch.device | str = "cpu"):
    """uint8 (N, H, W) reader pixels -> (batch_size, 1, H, W) tensors in order, un-augmented; a
    last short batch is left out (for training.common.precise_bn: every batch weighs the same)."""
    for i in range(0, len(pixels) - batch_size + 1, batch_size):
        yield to_captcha_tensor(pixels[i:i + batch_size]).to(device)
