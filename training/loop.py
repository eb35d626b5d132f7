"""The one training loop every trainer uses: `fit(model, source, loss_fn, settings=...)`.

A budget of epochs (of `steps_per_epoch` steps), and optionally of samples or minutes,
whichever runs out first; AdamW with a one-cycle (cosine) learning-rate schedule that follows
the fraction of the budget spent (for a pure epoch budget exactly torch's `OneCycleLR`);
gradient-norm clipping; bf16 autocast of the forward pass on any device (weights, optimizer,
loss and evaluation stay fp32); one progress bar; a per-epoch history record (train loss and
the trainer's own figures, samples seen, learning rate, seconds); and, with a snapshot folder,
a snapshot after every epoch that `resume` continues from exactly where it stopped.

A snapshot folder holds `model.safetensors` (the trained module's state), `state.safetensors`
(optimizer tensors, RNG states, the batch source's tensors) and `state.json` (counters, history,
optimizer settings): nothing is pickled. A trainer may add files (the captcha trainer writes
each reader's exported checkpoint there, for `--init`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PRECISIONS = ("fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast on `device` runs on bf16 hardware. CPUs without AVX-512 BF16 or AMX
    emulate it: on an AVX2-only EPYC a glyph net trained 13x slower under bf16 than in fp32."""
    if device.type != "cpu":
        return True
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


@dataclass(frozen=True)
class OneCycle:
    """The learning rate (and AdamW's beta1) over a run: cosine from peak/div_factor up to the
    peak over the first `warmup` of the budget, then cosine down to peak/div_factor/final_div_factor.
    With `momentum` = (max, base), beta1 goes from max to base at the peak and back (torch's
    `cycle_momentum`); None leaves AdamW's betas alone."""

    peak: float
    warmup: float = 0.15
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    momentum: tuple[float, float] | None = (0.95, 0.85)

    def at(self, spent: float, total: float, step_unit: float = 0.0) -> tuple[float, float | None]:
        """(lr, beta1 or None) after `spent` of `total`. Counted in steps with step_unit=1 this is
        torch's OneCycleLR to the bit (warm-up ends at step warmup*total - 1, the last step gets
        the final lr); counted in samples or seconds (step_unit=0), the fraction spent."""
        start, final = self.peak / self.div_factor, self.peak / self.div_factor / self.final_div_factor
        hi, lo = self.momentum or (None, None)
        warm_end, end = float(self.warmup * total) - step_unit, total - step_unit
        if spent <= warm_end and warm_end > 0:
            pct, lrs, moms = spent / warm_end, (start, self.peak), (hi, lo)
        else:
            pct, lrs, moms = (spent - warm_end) / max(end - warm_end, 1e-12), (self.peak, final), (lo, hi)
        pct = min(max(pct, 0.0), 1.0)
        return _cosine(*lrs, pct), (None if self.momentum is None else _cosine(*moms, pct))

    def describe(self, weight_decay: float, clock: bool = False) -> str:
        """For the manifest: 'AdamW(wd=...) + OneCycle(max_lr=...)' plus whatever differs from
        torch's OneCycleLR defaults."""
        extra = [f"warmup={self.warmup}"] if self.warmup != 0.15 else []
        if (self.div_factor, self.final_div_factor) != (25.0, 1e4):
            extra.append(f"final lr max_lr/{self.div_factor * self.final_div_factor:g}")
        if self.momentum is None:
            extra.append("no momentum cycling")
        if clock:
            extra.append("on wall-clock time")
        return f"AdamW(wd={weight_decay}) + OneCycle(max_lr={self.peak}{''.join(', ' + e for e in extra)})"


def _cosine(start: float, end: float, pct: float) -> float:
    cos_out = math.cos(math.pi * pct) + 1  # torch's _annealing_cos, same arithmetic
    return end + (start - end) / 2.0 * cos_out


@dataclass(frozen=True)
class Budget:
    """How long a run trains: `epochs` of `steps_per_epoch` steps, cut short by `samples` or
    `minutes` when given (0: no such limit)."""

    epochs: int
    steps_per_epoch: int
    samples: int = 0
    minutes: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def position(self, step: int, samples: int, seconds: float) -> tuple[float, float, float]:
        """The measure of progress furthest along, as (spent, total, step_unit) for OneCycle.at."""
        candidates = [(step, self.total_steps, 1.0)]
        if self.samples:
            candidates.append((samples, self.samples, 0.0))
        if self.minutes:
            candidates.append((seconds, self.minutes * 60, 0.0))
        return max(candidates, key=lambda c: c[0] / c[1])

    def spent(self, samples: int, seconds: float) -> bool:
        return bool(self.samples and samples >= self.samples) or bool(self.minutes and seconds >= self.minutes * 60)


@dataclass
class FitSettings:
    budget: Budget
    schedule: OneCycle
    weight_decay: float = 0.0
    clip: float | None = None  # gradient-norm clipping (None: none)
    precision: str = "fp32"  # bf16: autocast the forward pass
    progress: bool = True
    snapshot_dir: Path | None = None  # snapshot after every epoch
    resume: Path | None = None  # a snapshot folder to go on from
    # An `evaluate()` figure (higher is better): the model ends with the weights of the epoch
    # that scored it best, not the last epoch's (a clock budget's last epoch is often partial).
    keep_best: str | None = None
    bar_every: int = 20  # steps between progress-bar updates

    def describe_optimizer(self) -> str:
        return self.schedule.describe(self.weight_decay, clock=bool(self.budget.minutes))

    def describe_precision(self) -> str:
        return "bf16 autocast forward, fp32 weights/optimizer/evaluation" if self.precision == "bf16" else "fp32"


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    samples: int = 0  # samples trained on, across resumes
    seconds: float = 0.0  # wall clock, evaluations included, across resumes
    lr: float = 0.0
    resumed_from: str | None = None
    best_epoch: int | None = None  # with settings.keep_best: the epoch whose weights the model ends with
    # (history holds epochs 1, 2, ... in order, across resumes: epoch k is history[k - 1])

    @property
    def epochs(self) -> int:
        return len(self.history)


class BatchSource(Protocol):
    """Where batches come from: `next()` -> (inputs, targets) on the model's device. A source
    with `state_dict()` / `load_state_dict()` (tensors and JSON values) is snapshotted too."""

    def next(self) -> tuple[Any, torch.Tensor]: ...


class Shuffled:
    """Indices 0..n-1 in batches, a new permutation of `gen` (None: torch's global generator)
    for each pass. `drop_last`: every batch full (a pass's remainder is skipped); otherwise a
    pass ends with its smaller last batch, so with steps_per_epoch = ceil(n / batch_size) each
    epoch is one pass. `resize` changes n from the next pass on."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator | None = None, drop_last: bool = False):
        self.n, self.batch_size, self.gen, self.drop_last = n, batch_size, gen, drop_last
        self.order: torch.Tensor | None = None
        self.pos = 0
        self.new_pass: Callable[[], None] | None = None  # called before each pass after the first

    def resize(self, n: int) -> None:
        self.n = n

    def next(self) -> torch.Tensor:
        exhausted = self.order is None or (self.pos + self.batch_size > len(self.order) if self.drop_last
                                           else self.pos >= len(self.order))
        if exhausted:
            if self.order is not None and self.new_pass is not None:
                self.new_pass()
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"pos": self.pos, "n": self.n}
        if self.order is not None:
            state["order"] = self.order
        if self.gen is not None:
            state["gen"] = self.gen.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos, self.n, self.order = int(state["pos"]), int(state["n"]), state.get("order")
        if self.gen is not None:
            self.gen.set_state(state["gen"])


class ShuffledSource:
    """A batch source drawing its indices from a `Shuffled` in `self.order`; snapshots save
    where that stands (and its generator)."""

    order: Shuffled

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def to_float(outputs):
    """Model outputs (a tensor or a tuple of them) as fp32, for the loss."""
    if isinstance(outputs, tuple):
        return tuple(o.float() for o in outputs)
    return outputs.float()


LossFn = Callable[[Any, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def fit(model: nn.Module, source: BatchSource, loss_fn: LossFn, *, settings: FitSettings,
        forward: Callable[[Any], Any] | None = None, evaluate: Callable[[], dict[str, float]] | None = None,
        on_snapshot: Callable[[Path], None] | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Train `model` in place and return what happened.

    Each step: `source.next()` -> (inputs, targets); `forward(inputs)` (default `model(inputs)`)
    under autocast when settings.precision is bf16; `loss_fn(outputs as fp32, targets)` -> the
    loss, or (loss, {name: per-batch mean}) whose sample-weighted means go into the history as
    `train_<name>`. After each epoch `evaluate()` gives the epoch's figures (rounded as they
    should be recorded); the record and a log line are written, and with settings.snapshot_dir
    a snapshot (then `on_snapshot(folder)`). With settings.keep_best, the model ends with the
    weights of the epoch that scored best on that figure (result.best_epoch; kept in snapshots)."""
    device = next(model.parameters()).device
    if settings.precision == "bf16" and not native_bf16(device):
        log("warning: this CPU has no native bf16 (no AVX-512 BF16 or AMX): bf16 autocast is emulated and "
            "usually several times slower than fp32 here; --precision fp32 is the faster choice")
    forward = forward or model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.schedule.peak, weight_decay=settings.weight_decay)
    budget = settings.budget
    result = FitResult()
    first_epoch = 1
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights, on the CPU
    if settings.resume is not None:
        first_epoch = _restore(Path(settings.resume), model, opt, source, result)
        best_file = Path(settings.resume) / "best_model.safetensors"
        if result.best_epoch is not None and best_file.is_file():
            best_state = load_file(str(best_file))
        else:  # a snapshot without the best weights: the best is chosen among the epochs from here
            result.best_epoch = None
        log(f"resumed from {settings.resume}: epoch {first_epoch - 1}, {result.samples:,} samples, "
            f"{result.seconds:.0f} s")
    seconds_before = result.seconds
    start = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - start

    stopped = bool(result.history) and budget.spent(result.samples, result.seconds)
    for epoch in range(first_epoch, budget.epochs + 1):
        if stopped:
            break
        model.train()
        sums: dict[str, float] = {}
        n = 0
        bar = progress(range(budget.steps_per_epoch), total=budget.steps_per_epoch,
                       desc=f"epoch {epoch}/{budget.epochs}", disable=not settings.progress)
        for i in bar:
            if budget.spent(result.samples, elapsed()):
                stopped = True
                break
            lr, beta1 = settings.schedule.at(*budget.position(result.steps, result.samples, elapsed()))
            for group in opt.param_groups:
                group["lr"] = lr
                if beta1 is not None:
                    group["betas"] = (beta1, *group["betas"][1:])
            inputs, targets = source.next()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
                outputs = forward(inputs)
            loss = loss_fn(to_float(outputs), targets)
            loss, extras = loss if isinstance(loss, tuple) else (loss, {})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.clip:
                torch.nn.utils.clip_grad_norm_(params, settings.clip)
            opt.step()
            b = len(targets)
            result.steps += 1
            result.samples += b
            result.lr = lr
            n += b
            for key, value in (("loss", loss), *extras.items()):
                sums[key] = sums.get(key, 0.0) + value.item() * b
            if i % settings.bar_every == 0:
                bar.set_postfix(loss=f"{sums['loss'] / n:.4g}", lr=f"{lr:.2e}")
        if n == 0:
            break
        record = {"epoch": epoch, **{f"train_{k}": round(v / n, 6) for k, v in sums.items()}}
        figures = evaluate() if evaluate is not None else {}
        record.update(figures)
        result.seconds = round(elapsed(), 1)
        record.update({"samples_seen": result.samples, "lr": round(result.lr, 6), "seconds": result.seconds})
        result.history.append(record)
        if settings.keep_best is not None:
            if settings.keep_best not in figures:
                raise KeyError(f"keep_best: evaluate() gives no {settings.keep_best!r} (it gives {sorted(figures)})")
            best = result.history[result.best_epoch - 1][settings.keep_best] if result.best_epoch else -math.inf
            if figures[settings.keep_best] > best:
                result.best_epoch = epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in figures.items())
        log(f"epoch {epoch:2d}/{budget.epochs} train_loss {record['train_loss']:.5g}{' | ' + shown if shown else ''}"
            f" | lr {result.lr:.2e} seen {result.samples:,} [{result.seconds:.0f}s]")
        if settings.snapshot_dir is not None:
            _snapshot(Path(settings.snapshot_dir), model, opt, source, result, epoch, on_snapshot, best_state)
        stopped = stopped or budget.spent(result.samples, elapsed())
    result.seconds = round(elapsed(), 1)
    if best_state is not None and result.best_epoch != len(result.history):
        model.load_state_dict(best_state)
        key = settings.keep_best
        log(f"kept epoch {result.best_epoch}'s weights: {key} {_fmt(result.history[result.best_epoch - 1][key])} "
            f"(the last epoch's: {_fmt(result.history[-1][key])})")
    return result


def _fmt(value) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def progress(iterable, *, total: int, desc: str, disable: bool = False, mininterval: float = 1.0):
    """The progress bar every trainer and data writer shows (tqdm; `disable` for logs only)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True,
                mininterval=mininterval)


# --- snapshots --------------------------------------------------------------------------------

def _snapshot(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, source, result: FitResult, epoch: int,
              on_snapshot: Callable[[Path], None] | None, best_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the snapshot beside `folder`, then swap it in: a crash mid-write leaves the last one.
    With `best_state` (keep_best), the best epoch's weights go into best_model.safetensors."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # Copies, so modules shared between two parents (JointCaptcha) are stored under each name.
    save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
              str(partial / "model.safetensors"))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(partial / "best_model.safetensors"))
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    opt_state = opt.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    plain = {}
    for key, value in (source.state_dict() if hasattr(source, "state_dict") else {}).items():
        if isinstance(value, torch.Tensor):
            tensors[f"source.{key}"] = value.contiguous()
        else:
            plain[key] = value
    save_file(tensors, str(partial / "state.safetensors"))
    state = {"epoch": epoch, **{k: v for k, v in asdict(result).items() if k != "resumed_from"},
             "optimizer_param_groups": opt_state["param_groups"], "source": plain}
    (partial / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    if on_snapshot is not None:
        on_snapshot(partial)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _restore(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, source, result: FitResult) -> int:
    """Load a snapshot into the model, optimizer, RNGs and source; returns the next epoch."""
    if not (folder / "state.json").is_file():
        raise SystemExit(f"{folder} is not a snapshot folder (no state.json): pass <out>/snapshots of a run "
                         "trained with --snapshot")
    state = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    groups = state["optimizer_param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    opt.load_state_dict({"state": opt_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if hasattr(source, "load_state_dict"):
        source.load_state_dict({**state["source"], **{k[len("source."):]: v for k, v in tensors.items()
                                                       if k.startswith("source.")}})
    result.history = state["history"]
    result.steps, result.samples, result.seconds, result.lr = (state["steps"], state["samples"], state["seconds"],
                                                               state["lr"])
    result.best_epoch = state.get("best_epoch")
    result.resumed_from = str(folder)
    return state["epoch"] + 1


# --- the command line --------------------------------------------------------------------------

def add_fit_args(parser, *, epochs: int, lr: float, batch_size: int, weight_decay: float, clip: float | None,
                 precision: str = "fp32", warmup: float = 0.15) -> None:
    """The loop's flags, with each trainer's defaults."""
    g = parser.add_argument_group("training loop")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=batch_size)
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate (one-cycle)")
    g.add_argument("--warmup", type=float, default=warmup, help="share of the schedule rising to --lr")
    g.add_argument("--weight-decay", type=float, default=weight_decay)
    g.add_argument("--clip", type=float, default=clip or 0.0, help="gradient norm clipping (0: none)")
    g.add_argument("--samples", type=int, default=0,
                   help="sample budget: stop after this many training samples (--epochs is then an upper bound)")
    g.add_argument("--minutes", type=float, default=0,
                   help="wall-clock budget: the LR schedule follows elapsed time and training stops when it is "
                        "spent (--epochs is then an upper bound)")
    g.add_argument("--precision", choices=PRECISIONS, default=precision,
                   help="bf16: autocast the forward pass (weights, optimizer and evaluation stay fp32)")
    g.add_argument("--snapshot", action="store_true",
                   help="snapshot after every epoch to <out>/snapshots (weights, optimizer, counters) for --resume")
    g.add_argument("--resume", metavar="SNAPSHOTS", help="go on from a snapshot folder (<out>/snapshots)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def settings_from_args(args, steps_per_epoch: int, out: str | Path, **schedule) -> FitSettings:
    """FitSettings from add_fit_args' flags; `schedule` overrides OneCycle's other fields."""
    return FitSettings(
        budget=Budget(args.epochs, steps_per_epoch, samples=args.samples, minutes=args.minutes),
        schedule=OneCycle(args.lr, warmup=args.warmup, **schedule),
        weight_decay=args.weight_decay, clip=args.clip or None, precision=args.precision,
        progress=not args.no_progress, snapshot_dir=Path(out) / "snapshots" if args.snapshot else None,
        resume=Path(args.resume) if args.resume else None)
