"""Train the number reader's digit glyph net (models/number_glyph.py) and export the reader
with it.

    python -m training.number_glyph --reader models/weights/number_ctc.json --lines 100000 \
        --minutes 40 --threads 2 --out /tmp/glyph
    python -m training.number_glyph --reader NEW_READER.json --glyph-from /tmp/glyph/number_ctc.json \
        --out /tmp/glyph2   # the same glyph net on another reader: only its mix is fitted again

The reader's weights are not changed. Training crops come from fresh lines of MNIST training
digits 0..53,999 (augmented as the reader's training lines, 20% drawn like the page's pad),
cut where the reader itself puts each digit; lines it reads at the wrong length are left out
(their spans do not line up with the digits). The mix of glyph net and reader is fitted on the
reader's validation lines (digits 54,000..59,999); the figures come from the MNIST-test lines
as for the reader (training/number.py).
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from models.checkpoint import load_checkpoint, stored_state
from models.device import resolve_device
from models.number import NumberReader, read_number
from models.number_glyph import DigitGlyphConfig, DigitGlyphNet, glyph_crop, mix_digits
from models.preprocess import number_line
from training.augment import augment_digits
from training.common import add_common_args, load_mnist, seed_everything
from training.export import export, training_section
from training.loop import Shuffled, ShuffledSource, fit, settings_from_args
from training.number import TRAIN_DIGITS, number_metrics, score
from training.number_data import CONTRACT, LineSource, collate, drawn_lines, mnist_lines, validation_lines

MIX_GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
STORAGE = "float16"  # how the exported file keeps its weights; the figures are read with exactly those


@torch.inference_mode()
def digit_evidence(reader: NumberReader, inks: list, texts: list[str], crops_from: str, batch_size: int = 256):
    """Lines -> for every digit of the lines the reader reads at their true length: its crop
    (N, 1, 28, 28) uint8 (cut from the line or its source ink, `crops_from`), its true digit
    (N,), the reader's probabilities at its column (N, 11) and which line it belongs to (N,);
    and the reader's texts for all lines."""
    reader.eval()
    order = sorted(range(len(inks)), key=lambda i: inks[i].shape[1])
    crops, truth, reader_probs, line_of, texts_read = [], [], [], [], [""] * len(inks)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        lines = [number_line(inks[i], CONTRACT) for i in chunk]
        batch = collate(lines, ["0"] * len(chunk))
        logits, lengths = reader(batch.x, batch.widths)
        readings = read_number(logits, lengths)
        reader.find_spans(batch.x, lengths, readings)
        keep = [j for j, (i, r) in enumerate(zip(chunk, readings)) if len(r.text) == len(texts[i])]
        for i, r in zip(chunk, readings):
            texts_read[i] = r.text
        if not keep:
            continue
        c, at = reader.digit_evidence(batch.x[keep], logits[keep], [readings[j] for j in keep],
                                      [lines[j] for j in keep], crops_from)
        crops.append((c * 255).round().to(torch.uint8))
        reader_probs.append(at)
        for j in keep:
            truth += [int(ch) for ch in texts[chunk[j]]]
            line_of += [chunk[j]] * len(texts[chunk[j]])
    return (torch.cat(crops), torch.tensor(truth), torch.cat(reader_probs), torch.tensor(line_of), texts_read)


def training_lines(images, labels, count: int, seed: int):
    """`count` lines of 1-10 digits like the reader's training batches (augmented digits, 20%
    drawn), reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    source = LineSource(images, labels, 1, gen, torch.device("cpu"))
    rng = random.Random(seed)
    lengths = [rng.randint(1, source.max_len) for _ in range(count)]
    drawn = [n for n in lengths if rng.random() < source.drawn_share]
    plain = lengths[len(drawn):]
    inks, texts = mnist_lines(images, labels, plain, rng, gen)
    more_inks, more_texts = drawn_lines(drawn, rng)
    return inks + more_inks, texts + more_texts


class CropBatches(ShuffledSource):
    """Shuffled batches of uint8 crops -> (float crops (B, 1, 28, 28) in [0, 1], digits (B,)):
    with `augment`, each crop warped as the digit trainer warps digits (affine, stroke width,
    blur); without, each batch shifted by up to 1 px (placement noise)."""

    def __init__(self, crops: torch.Tensor, digits: torch.Tensor, batch_size: int, device: torch.device,
                 augment: bool = False, seed: int = 0):
        self.crops, self.digits, self.device, self.augment = crops, digits, device, augment
        self.order = Shuffled(len(crops), batch_size, drop_last=True)
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next()
        x = self.crops[idx].float() / 255
        if self.augment:
            x = augment_digits(x[:, 0], self.gen).unsqueeze(1)
        else:
            dy, dx = (int(v) for v in torch.randint(-1, 2, (2,)))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return x.to(self.device), self.digits[idx].to(self.device)


def mnist_crops(images: torch.Tensor) -> torch.Tensor:
    """Whole MNIST digits (N, 28, 28) in [0, 1] -> (N, 1, 28, 28) uint8, laid out by
    `glyph_crop` exactly as a digit cut from a line is."""
    return torch.stack([(glyph_crop(image, (0.0, 28.0)) * 255).round().to(torch.uint8) for image in images])[:, None]


@torch.inference_mode()
def glyph_logits(net: DigitGlyphNet, crops: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    net.eval()
    device = next(net.parameters()).device
    return torch.cat([net((crops[i:i + batch].float() / 255).to(device)).float().cpu()
                      for i in range(0, len(crops), batch)])


def fit_mix(glyph: torch.Tensor, reader_probs: torch.Tensor, truth: torch.Tensor, line_of: torch.Tensor
            ) -> tuple[list[float], dict]:
    """The (glyph, reader) weights on a grid that get the most validation lines right (lines
    the reader reads at the wrong length are wrong whatever the mix); ties go to the lower
    log loss."""
    reader = reader_probs[:, 1:] / reader_probs[:, 1:].sum(-1, keepdim=True)
    best, table = None, {}
    for a, b in itertools.product(MIX_GRID, MIX_GRID):
        if a == 0 and b == 0:
            continue
        p = mix_digits(glyph, reader, [a, b])
        wrong = p.argmax(-1) != truth
        lines_wrong = int(torch.unique(line_of[wrong]).numel())
        nll = float(F.nll_loss(p.clamp_min(1e-12).log(), truth))
        table[f"{a},{b}"] = {"digits_wrong": int(wrong.sum()), "lines_wrong": lines_wrong}
        key = (lines_wrong, int(wrong.sum()), nll)
        if best is None or key < best[0]:
            best = (key, [a, b])
    return best[1], {"reader_alone": table["0.0,1.0"], "glyph_alone": table["1.0,0.0"],
                     "chosen": table[f"{best[1][0]},{best[1][1]}"]}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reader", default="models/weights/number_ctc.json")
    parser.add_argument("--glyph-from", metavar="MANIFEST", help="take the glyph net of this reader; train none")
    parser.add_argument("--glyph-init", metavar="MANIFEST", help="train on from the glyph net of this reader")
    parser.add_argument("--lines", type=int, default=100_000, help="training lines to cut crops from")
    parser.add_argument("--val-lines", type=int, default=3_000)
    parser.add_argument("--data-seed", type=int, default=31)
    parser.add_argument("--cache", metavar="FILE", help="keep the training crops here (.pt) and reuse them")
    parser.add_argument("--crops", choices=["source", "line"], default="source",
                        help="cut crops from the ink at its own resolution (default) or from the 28 px line")
    parser.add_argument("--augment", action="store_true",
                        help="warp each training crop as the digit trainer warps digits (else 1 px shifts)")
    parser.add_argument("--mnist-digits", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="train on the whole training digits 0..53,999 too, laid out as crops, N times "
                             "over (default once); with --lines 0, on those alone")
    parser.add_argument("--channels", type=int, nargs="+", default=DigitGlyphConfig().channels,
                        help="a new glyph net's channels per conv block")
    add_common_args(parser, epochs=4, lr=2e-3, batch_size=128, weight_decay=5e-4, clip=5.0)
    args = parser.parse_args(argv)
    if args.lines < 0 or args.mnist_digits < 0:
        parser.error("--lines and --mnist-digits take counts of 0 or more")
    if not (args.lines or args.mnist_digits or args.cache or args.glyph_from):
        parser.error("--lines 0 needs --mnist-digits: there is nothing else to train on")
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    start = time.perf_counter()
    model, manifest = load_checkpoint(args.reader)
    reader = model.without_glyph()
    train_x, train_y = load_mnist(args.data_root, train=True, limit=args.limit)
    split = min(TRAIN_DIGITS, int(len(train_x) * 0.9))
    val_inks, val_texts = validation_lines(train_x[split:], train_y[split:], args.val_lines)

    source = previous = None  # the reader whose glyph net is taken (--glyph-from) or trained on (--glyph-init)
    if args.glyph_from or args.glyph_init:
        source, source_manifest = load_checkpoint(args.glyph_from or args.glyph_init)
        if source.glyph is None:
            raise SystemExit(f"{args.glyph_from or args.glyph_init} carries no glyph net")
        previous = source_manifest.training["glyph"]
    crops_from = source.glyph.config.crops if source is not None else args.crops
    val_crops, val_truth, val_reader, val_line_of, val_read = digit_evidence(reader, val_inks, val_texts, crops_from)
    alone = score(val_read, val_texts)

    if args.glyph_from:
        net, result, settings, glyph_training = source.glyph.eval(), None, None, previous
    else:
        cached = torch.load(args.cache) if args.cache and Path(args.cache).exists() else None
        if cached is not None and cached.get("crops_from", "line") != crops_from:
            raise SystemExit(f"{args.cache} holds crops cut from the {cached.get('crops_from', 'line')}, "
                             f"not the {crops_from}")
        parts = []  # (crops, digits): cut from lines (or the cache), then the whole digits N times over
        if cached is not None:
            parts.append((cached["crops"], cached["digits"]))
        elif args.lines:
            inks, texts = training_lines(train_x[:split], train_y[:split], args.lines, args.data_seed)
            cut, cut_digits, _, _, _ = digit_evidence(reader, inks, texts, crops_from)
            parts.append((cut, cut_digits))
            if args.cache:
                torch.save({"crops": cut, "digits": cut_digits, "crops_from": crops_from}, args.cache)
        if args.mnist_digits:  # the same layout N times over; each draw is warped apart with --augment
            parts += [(mnist_crops(train_x[:split]), train_y[:split])] * args.mnist_digits
        crops, digits = torch.cat([c for c, _ in parts]), torch.cat([d for _, d in parts])
        print(f"{len(crops):,} training crops from {args.lines:,} lines, {len(val_crops):,} validation crops "
              f"[{time.perf_counter() - start:.0f}s]", flush=True)
        net = source.glyph if source is not None else DigitGlyphNet(DigitGlyphConfig(args.channels, crops=crops_from))
        net = net.to(device).train()
        settings = settings_from_args(args, len(crops) // args.batch_size, args.out)

        def validate() -> dict:
            return {"val_digit_error": round(float((glyph_logits(net, val_crops).argmax(-1) != val_truth)
                                                   .float().mean()), 5)}

        batches = CropBatches(crops, digits, args.batch_size, device, augment=args.augment, seed=args.seed)
        result = fit(net, batches, F.cross_entropy, settings=settings, evaluate=validate)
        net = net.cpu().eval()
        glyph_training = None

    mix, table = fit_mix(glyph_logits(net, val_crops), val_reader, val_truth, val_line_of)
    net.config = replace(net.config, mix=mix)
    combined = reader.with_glyph(net)
    # Rereading unsure lines was chosen on validation for the old glyph net: set it again for this
    # one (training.number --reevaluate --reread-below); its figures are dropped below.
    combined.config.reread = None
    # The file keeps float16 weights (half the size); read the figures with exactly those.
    combined.load_state_dict(stored_state(combined, STORAGE))
    test_x, test_y = load_mnist(args.data_root, train=False, limit=args.limit)
    limited = bool(args.limit)
    metrics = number_metrics(combined, test_x, test_y, "cpu", lines=2_000 if limited else 10_000,
                             drawn=50 if limited else 500, uploads=100 if limited else 2_000)
    seconds = round(time.perf_counter() - start, 1)
    if glyph_training is None:
        glyph_training = training_section(
            result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
            validation_crops=len(val_crops),
            data={"lines": args.lines, "seed": args.data_seed, "training_crops": len(crops), "crops_from": crops_from,
                  "mnist_digits": args.mnist_digits,
                  "augmentation": "the digit trainer's warps (affine, stroke width, blur)" if args.augment
                  else "shifts of up to 1 px"},
            parameters=sum(p.numel() for p in net.parameters()))
        if previous is not None:  # the chunks so far, this one last
            chunks = previous.get("chunks") or [{k: previous[k] for k in ("samples_seen", "seconds", "epochs")}]
            glyph_training["chunks"] = chunks + [{k: glyph_training[k] for k in ("samples_seen", "seconds", "epochs")}]
            glyph_training["init"] = Path(args.glyph_init).name
    glyph_info = {**{k: v for k, v in glyph_training.items() if k not in ("mix", "validation", "glyph_from")},
                  "how": "the reader's weights unchanged; a CNN trained on MNIST-style crops of each digit's span, "
                         "cut where the reader reads it, its weight against the reader fitted on validation lines",
                  "mix": mix, "validation": {"lines": args.val_lines, "reader_alone_number_accuracy":
                                             alone["number_accuracy"], **table},
                  "seconds_total": seconds}
    if args.glyph_from:
        glyph_info["glyph_from"] = Path(args.glyph_from).name
    reader_metrics = {k: manifest.metrics[k] for k in ("mnist_lines_number_accuracy", "mnist_lines_digit_accuracy",
                                                        "drawn_number_accuracy") if k in manifest.metrics}
    if model.config.glyph is not None:
        reader_metrics = manifest.metrics.get("reader_alone", reader_metrics)
    out = replace(manifest, architecture=combined.config.to_dict(), description=combined.describe(),
                  parameters=combined.num_parameters())
    kept = {k: v for k, v in manifest.metrics.items() if not k.startswith("final_") and k != "reread"}
    out.metrics = {**kept, **metrics,
                   "reader_alone": reader_metrics}
    out.training = {**{k: v for k, v in manifest.training.items() if k != "glyph"}, "glyph": glyph_info}
    json_path = export(combined, out, args.out, manifest.name, storage=STORAGE)
    print(f"mix {mix} | validation lines wrong: reader alone {table['reader_alone']['lines_wrong']}, "
          f"glyph alone {table['glyph_alone']['lines_wrong']}, mixed {table['chosen']['lines_wrong']} | "
          f"wrote {json_path} [{seconds:.0f}s]", flush=True)
    return json_path


if __name__ == "__main__":
    main()
