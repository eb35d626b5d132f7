"""Where the number reader's remaining errors come from, on its validation lines (MNIST training
digits 54,000-59,999; never the test lines): digits its glyph net misreads even alone (odd or
mislabelled MNIST digits: no better reading of the line fixes those), lines read at the wrong
length, and, for the digits of lines read once at the right length, whether the glyph net or
the reader was the one that was wrong.

    .venv/bin/python -m bench.number_errors --save bench/results/number_errors.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.captcha_common import edit_distance
from models.checkpoint import load_checkpoint
from models.number import NumberReader
from models.number_glyph import mix_digits
from models.preprocess import number_line
from training.common import default_data_root, load_mnist
from training.number import TRAIN_DIGITS, read_all
from training.number_data import CONTRACT, validation_lines
from training.number_glyph import digit_evidence, glyph_logits, mnist_crops


def error_sources(model: NumberReader, images: torch.Tensor, labels: torch.Tensor, count: int) -> dict:
    """images (N, 28, 28), labels (N,): the validation digits -> the error breakdown of `count`
    validation lines read as served (rereads as the manifest says)."""
    if model.glyph is None:
        raise ValueError("the breakdown needs a reader with a glyph net")
    inks, texts, ids = validation_lines(images, labels, count, with_ids=True)
    readings = read_all(model, [number_line(ink, CONTRACT) for ink in inks], "cpu")
    misread_alone = (glyph_logits(model.glyph, mnist_crops(images)).argmax(-1) != labels).tolist()  # (N,)
    errors = [edit_distance(r.text, t) for r, t in zip(readings, texts)]
    holds = [any(misread_alone[i] for i in line_ids) for line_ids in ids]
    wrong = [i for i, e in enumerate(errors) if e]

    # Read once: each digit of a line read at its true length, glyph net and reader apart.
    crops, truth, reader_probs, line_of, _ = digit_evidence(model.without_glyph(), inks, texts, model.glyph.config.crops)
    glyph_scores = glyph_logits(model.glyph, crops)  # (D, 10)
    reader = reader_probs[:, 1:] / reader_probs[:, 1:].sum(-1, keepdim=True)  # (D, 10) without the blank
    glyph, mixed = glyph_scores.argmax(-1), mix_digits(glyph_scores, reader, model.glyph.config.mix).argmax(-1)
    # Each kept line's digits come together, left to right: their image indices in that order.
    digit_ids = [i for line in line_of.unique_consecutive().tolist() for i in ids[line]]
    alone = torch.tensor([misread_alone[i] for i in digit_ids], dtype=torch.bool)
    bad, glyph_ok, reader_ok = mixed != truth, glyph == truth, reader.argmax(-1) == truth
    return {
        "lines": count, "digits": sum(map(len, texts)), "digit_errors": sum(errors), "wrong_lines": len(wrong),
        "validation_digits": len(labels), "misread_alone": sum(misread_alone),
        "wrong_lines_holding_a_digit_misread_alone": sum(holds[i] for i in wrong),
        "digit_errors_in_those_lines": sum(errors[i] for i in wrong if holds[i]),
        "wrong_length_lines": sum(len(readings[i].text) != len(texts[i]) for i in wrong),
        "read_once_right_length": {
            "digits": len(truth), "wrong": int(bad.sum()), "misread_alone": int((bad & alone).sum()),
            "glyph_wrong_reader_right": int((bad & ~alone & ~glyph_ok & reader_ok).sum()),
            "reader_wrong_glyph_right": int((bad & ~alone & glyph_ok & ~reader_ok).sum()),
            "both_wrong": int((bad & ~alone & ~glyph_ok & ~reader_ok).sum()),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="models/weights/number_ctc.json")
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--data-root", default=default_data_root(), help="folder holding MNIST/raw (as the trainers')")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", metavar="JSON", help="write the breakdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, _ = load_checkpoint(args.manifest)
    x, y = load_mnist(args.data_root, train=True)
    result = {"manifest": Path(args.manifest).name, **error_sources(model.eval(), x[TRAIN_DIGITS:], y[TRAIN_DIGITS:],
                                                                     args.lines)}
    once = result["read_once_right_length"]
    print(f"{result['lines']:,} validation lines: {result['digit_errors']} digit errors in {result['wrong_lines']} "
          f"wrong lines ({result['wrong_length_lines']} at the wrong length); "
          f"{result['misread_alone']} of the {result['validation_digits']:,} digits are misread even alone, and "
          f"{result['wrong_lines_holding_a_digit_misread_alone']} wrong lines ({result['digit_errors_in_those_lines']} "
          f"digit errors) hold one. Read once at the right length: {once['wrong']} of {once['digits']:,} digits wrong: "
          f"{once['misread_alone']} misread alone, {once['reader_wrong_glyph_right']} the reader outvoting a right glyph "
          f"net, {once['glyph_wrong_reader_right']} the other way round, {once['both_wrong']} both wrong "
          f"[{time.perf_counter() - start:.0f}s]", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
