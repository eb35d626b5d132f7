"""Render the README's model table and captcha results from the committed manifests, and the
load tables of README.md and docs/serving.md from the saved load bench (bench/results/load.json,
written by `bench/load.py --save`), so their figures are never typed by hand.

    .venv/bin/python bench/readme_tables.py           # print the blocks
    .venv/bin/python bench/readme_tables.py --write   # replace them in README.md and docs/serving.md

tests/test_readme.py fails when the documents and the manifests or the saved bench disagree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.catalog import spec_for  # noqa: E402
from models.manifest import Manifest  # noqa: E402

WEIGHTS = ROOT / "models" / "weights"
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
CAPTCHA_TARGETS = {"seq2seq": 0.9875, "default": 0.995, "default_longer": 0.99}  # issues #3, #12


def _fmt_pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else "-"


def _row(m: dict) -> str:
    t, metrics = m.get("training", {}), m.get("metrics", {})
    task, arch = m["task"], m["architecture"]
    variant = Manifest.from_dict(m).served_name()  # the model= it answers to: captcha_general -> general
    if task == "digits":
        desc = f"{arch['cell'].upper()} {arch['num_layers']}x{arch['hidden_size']}, 28 rows x 28 px"
        metric = (f"MNIST test {_fmt_pct(metrics.get('mnist_test_accuracy'))} "
                  f"(via upload pipeline {_fmt_pct(metrics.get('mnist_test_accuracy_upload_pipeline'))})")
    elif task == "captcha" and "mix_full_string_accuracy" in metrics:  # the general reader: many styles
        desc = m.get("description", variant)
        per_family = metrics.get("validation_per_family", {})
        zero_shot = ", ".join(f"{f} {_fmt_pct(per_family.get(f, {}).get('full_string_accuracy'))}"
                              for f in metrics.get("zero_shot_families", []))
        metric = (f"validation full string, mean of the {len(per_family) - len(metrics.get('zero_shot_families', []))} "
                  f"mix styles {_fmt_pct(metrics['mix_full_string_accuracy'])}; zero-shot {zero_shot}")
    elif task == "captcha":
        desc = m.get("description", variant)
        full = next((v for k, v in metrics.items() if "full" in k and "acc" in k), None)
        char = next((v for k, v in metrics.items() if "char" in k and "acc" in k), None)
        metric = f"full string {_fmt_pct(full)}, per char {_fmt_pct(char)}"
    elif task == "number":
        desc = m.get("description", variant)
        metric = (f"10,000 MNIST-test lines of 1-8 digits: {_fmt_pct(metrics.get('mnist_lines_number_accuracy'))} whole "
                  f"number, {_fmt_pct(metrics.get('mnist_lines_digit_accuracy'))} per digit")
    elif task == "autoencoder":
        desc = m.get("description", f"conv encoder -> {arch.get('latent_dim', arch.get('code_size', '?'))}-d -> ConvTranspose2d decoder")
        mse = metrics.get("mnist_test_mse")
        psnr = metrics.get("mnist_test_psnr")
        metric = f"MNIST test MSE {mse:.4f}, PSNR {psnr:.1f} dB" if mse is not None and psnr is not None else "-"
    else:
        desc, metric = variant, "-"
    size_kb = (WEIGHTS / m["weights"]).stat().st_size / 1024
    return (f"| {task} | {variant} | {desc} | {m.get('parameters', 0):,} | {metric} | {t.get('epochs', '-')} | "
            f"{t.get('total_seconds', t.get('seconds', 0)) / 60:.0f} min | {size_kb:,.0f} KB |")


def render() -> str:
    manifests = [json.loads(p.read_text()) for p in sorted(WEIGHTS.glob("*.json"))]
    order = {"digits": 0, "number": 1, "captcha": 2, "autoencoder": 3}
    manifests.sort(key=lambda m: (order.get(m["task"], 9), m["name"]))
    lines = ["| task | model | architecture | parameters | test metrics | epochs | training time | weights |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_row(m) for m in manifests]
    return "\n".join(lines)


def _is_o0(truth: str, read: str) -> bool:
    """A misread whose only wrong characters are o read as 0 or 0 read as o."""
    return len(truth) == len(read) and all(t == r or {t, r} == {"o", "0"} for t, r in zip(truth, read))


def _own(run: dict) -> tuple[int, float]:
    """A run's own samples and seconds (without those of the checkpoint it started from)."""
    init = run.get("init") or {"samples_seen": 0, "seconds": 0}
    return run["samples_seen"] - init["samples_seen"], run["seconds"] - init["seconds"]


def _stage(soup: dict) -> str:
    runs = []
    for run in soup["runs"]:
        samples, seconds = _own(run)
        lr = re.search(r"max_lr=([0-9.e-]+)", run.get("optimizer") or "")
        start = "from scratch" if not run.get("init") else f"from a checkpoint at {run['init']['samples_seen']:,} samples"
        runs.append(f"seed {run['seed']} {start}, peak lr {lr.group(1) if lr else '?'}: {samples:,} samples in "
                    f"{seconds / 60:.0f} min")
    val, chosen = soup.get("validation"), soup.get("chosen", "average")
    picked = ""
    if val and val.get("average"):
        full = lambda v: f"{v['seq2seq']['full_string_accuracy']:.2%} / {v['ctc']['full_string_accuracy']:.2%}"  # noqa: E731
        alone = ", ".join(f"seed {r['seed']} {full(val[r['run']])}" for r in soup["runs"] if r["run"] in val)
        picked = (f" (validation, {soup.get('val_samples', 2000):,} captchas, seq2seq / ctc full string: average "
                  f"{full(val['average'])}; runs alone {alone})")
    if chosen == "average":
        return "; ".join(runs) + "; then their weights averaged" + picked
    seed = next(r["seed"] for r in soup["runs"] if r["run"] == chosen)
    return "; ".join(runs) + f"; the run with seed {seed} alone read best and is kept as is" + picked


def _glyph_parameters(config: dict) -> int:
    from models.captcha_o0 import O0GlyphConfig, O0GlyphNet

    return sum(p.numel() for p in O0GlyphNet(O0GlyphConfig(**config)).parameters())


def _o0_lengths(data: dict) -> str:
    """ " of 4-8 characters" for an o/0 set of several lengths, else nothing (4, as the readers)."""
    lengths = data.get("lengths") or [4]
    return f" of {min(lengths)}-{max(lengths)} characters" if len(lengths) > 1 else ""


def _o0_runs(o0: dict, lengths: bool = True) -> str:
    """Each run of an o/0 glyph net, oldest first: one that went on from another (`--init`) names both."""
    runs, run = [], o0
    while run:
        train = run["data"]["train"]
        runs.insert(0, f"{run['windows']:,} windows from {train['count']:,} captchas"
                       f"{_o0_lengths(train) if lengths else ''} (seed {train['seed']}), {run['samples_seen']:,} "
                       f"samples in {run['seconds'] / 60:.0f} min")
        run = run.get("init")
    return "; then, going on from that net, ".join(runs)


def _lengths_note(variant: str, manifest: dict, chunk: dict) -> str:
    """How a seed-style reader learned every length (training.captcha_lengths), from its manifest."""
    arch = manifest["architecture"]
    weights = chunk.get("length_weights") or {}
    share = ", ".join(f"{n}: {w:.0%}" for n, w in weights.items())
    end = (f", with an end token ({arch['length'] + 1} decoder steps, 37 classes)" if chunk.get("end_token") else "")
    chunks = [*chunk.get("earlier_chunks", []), chunk]
    runs = ("" if len(chunks) == 1 else f" in {len(chunks)} runs, each from the last one's weights (peak lr "
            + ", ".join(f"{c['lr']:g}" for c in chunks) + ")")
    own_glyph = (manifest["training"].get("o0") or {}).get("data", {}).get("train", {}).get("lengths")
    glyph = "then given a glyph net of its own (above)" if own_glyph else "its o/0 glyph net left as it was"
    return (f"Then `{variant}` learned every length (`training/captcha_lengths.py`): from the weights above, its input "
            f"widened to {arch['width']}x{arch['height']} ({arch['width'] // 4} columns){end}, trained on fresh captchas "
            f"of 1-8 characters from the same generator ({share}), {glyph}: "
            f"{sum(c['samples_seen'] for c in chunks):,} samples in {sum(c['seconds'] for c in chunks) / 60:.0f} min on "
            f"one thread{runs}, {chunk['optimizer']}, {chunk.get('precision', 'fp32')}.")


def render_captcha() -> str:
    manifests = {v: json.loads((WEIGHTS / f"captcha_{v}.json").read_text()) for v in ("seq2seq", "ctc")}
    default = max(manifests, key=lambda v: spec_for("captcha", v).ranking_score(manifests[v]["metrics"]))  # as served
    some = manifests[default]["metrics"]
    # Columns for 5 and 6 characters when a reader was measured on them (one that reads any length).
    longer = {n: met for n in (5, 6) for met in [next((m["metrics"] for m in manifests.values()
                                                      if f"test_samples_{n}_chars" in m["metrics"]), None)] if met}
    lines = [f"Measured on {some['test_samples']:,} fresh captchas from seed {some['test_seed']}, never used in training "
             "or for any choice (full string = all 4 characters right, case ignored; per char = 1 - edit distance / 4; "
             "o/0: misreads whose only wrong characters are o and 0)"
             + "".join(f"; and on {met[f'test_samples_{n}_chars']:,} captchas of {n} characters from the same generator "
                       f"(seed {met[f'test_seed_{n}_chars']})" for n, met in longer.items())
             + ("; -: a reader of 4 characters only" if longer else "") + ":", "",
             "| model | parameters | full-string accuracy | per-char accuracy | misreads | of them o/0 |"
             + "".join(f" {n} characters |" for n in longer),
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(longer)]
    def row(name: str, parameters: int, met: dict, bold: bool) -> str:
        errors = [e.split("->") for e in met.get("test_errors", [])]
        wrong = round((1 - met["full_string_accuracy"]) * manifests[default]["metrics"]["test_samples"])
        o0 = sum(_is_o0(t, r) for t, r in errors)
        full = f"**{met['full_string_accuracy']:.2%}**" if bold else f"{met['full_string_accuracy']:.2%}"
        more = "".join(f" {_fmt_pct(met.get(f'full_string_accuracy_{n}_chars'))} |" for n in longer)
        return f"| {name} | {parameters:,} | {full} | {met['char_accuracy']:.2%} | {wrong} | {o0} |{more}"

    glyph = manifests["seq2seq"]["architecture"].get("o0")
    for v in sorted(manifests, key=lambda v: v != default):
        m, met = manifests[v], manifests[v]["metrics"]
        own = m["architecture"].get("o0")
        lines.append(row(f"`{v}`" + (" with the o/0 glyph net" if own else "") +
                         (" (served default)" if v == default else ""), m["parameters"], met, v == default))
        if own and "reader_alone" in met:
            lines.append(row(f"`{v}` reader alone", m["parameters"] - _glyph_parameters(own), met["reader_alone"], False))
    s2s = manifests["seq2seq"]["metrics"]["full_string_accuracy"]
    top = manifests[default]["metrics"]["full_string_accuracy"]
    verdict = lambda got, want: "met" if got >= want else "**not met**"  # noqa: E731
    lines += ["", f"Targets: `seq2seq` >= {CAPTCHA_TARGETS['seq2seq']:.2%}: {verdict(s2s, CAPTCHA_TARGETS['seq2seq'])} "
              f"({s2s:.2%}); the served default >= {CAPTCHA_TARGETS['default']:.2%}: "
              f"{verdict(top, CAPTCHA_TARGETS['default'])} ({top:.2%})."]
    if longer:
        got = {n: some.get(f"full_string_accuracy_{n}_chars") for n in longer}
        lines[-1] += (" Any length (issue #12), the served default >= "
                      + ", ".join(f"{CAPTCHA_TARGETS['default_longer']:.2%} on {n} characters: "
                                  + (f"{verdict(got[n], CAPTCHA_TARGETS['default_longer'])} ({got[n]:.2%})"
                                     if got[n] is not None else f"**not met** (`{default}` reads 4 only)")
                                  for n in longer) + ".")
    tta = (manifests["seq2seq"]["training"].get("soup") or {}).get("test_time_shifts")
    if tta and tta["used"]:
        shifts = ", ".join(f"({dx:+d}, {dy:+d})" for dx, dy in tta["shifts"])
        lines += ["", f"The served `seq2seq` reads each captcha {len(tta['shifts'])} times, moved by {shifts} px "
                  "(one batch), and averages the log-probabilities: chosen on the validation captchas, where it read "
                  f"{tta['val_full_string_accuracy_with']:.2%} against {tta['val_full_string_accuracy_without']:.2%} "
                  "for one view" + (" (the 4-character reader it grew from)."
                                    if "samples_seen" in (manifests["seq2seq"]["training"].get("lengths") or {})
                                    else ".")]
    o0 = manifests["seq2seq"]["training"].get("o0")
    if glyph and o0:
        data, data_val, val = o0["data"]["train"], o0["data"]["validation"], o0["validation"]
        errs = o0["validation_window_errors"]
        lines += ["", f"The `seq2seq` reader hands every character it reads as o or 0 to a second, small CNN "
                  f"({_glyph_parameters(glyph):,} parameters, `models/captcha_o0.py`) that looks at a {glyph['width']} px "
                  f"wide, full-height window of the 160x60 image itself, centred where the reader's attention for that "
                  f"character centres; the two log-odds of 0 against o are combined as {glyph['mix'][0]:.2f} x glyph net "
                  f"+ {glyph['mix'][1]:.2f} x reader (fitted on validation windows). It was trained on such windows cut "
                  f"from captchas where each character is o, O or 0 with probability {data['o0_share']:.0%} (on 2 "
                  f"threads, cutting the windows included): {_o0_runs(o0)}. Of the validation o/0 "
                  f"characters the reader answered o or 0 ({data_val['count']:,} captchas{_o0_lengths(data_val)}, seed "
                  f"{data_val['seed']}), the reader got {errs['reader']:,} wrong, the glyph net alone {errs['glyph']:,}, "
                  f"the two combined {errs['mix']:,}; on {o0['val_samples']:,} ordinary validation captchas the "
                  f"full-string accuracy goes from {val['alone']:.2%} to {val['with_o0']:.2%}."]
        ctc_o0 = manifests["ctc"]["training"].get("o0")
        if manifests["ctc"]["architecture"].get("o0") and ctc_o0 and "glyph_from" not in ctc_o0:
            errs, mix = ctc_o0["validation_window_errors"], manifests["ctc"]["architecture"]["o0"]["mix"]
            data = ctc_o0["data"]["train"]
            lines += ["", f"The `ctc` reader has a glyph net of its own (the same design), trained on windows centred on "
                      f"the columns of its CTC runs, cut from captchas{_o0_lengths(data)} where each character is o, O or "
                      f"0 with probability {data['o0_share']:.0%}: {_o0_runs(ctc_o0, lengths=False)}; "
                      f"mixed as {mix[0]:.2f} x glyph net + {mix[1]:.2f} x reader: of the {errs['characters']:,} "
                      f"o/0 characters of the validation captchas{_o0_lengths(ctc_o0['data']['validation'])} it answered "
                      f"o or 0, it got {errs['reader']:,} wrong alone and {errs['mix']:,} with the glyph net."]
        elif manifests["ctc"]["architecture"].get("o0") and ctc_o0:
            errs, mix = ctc_o0["validation_window_errors"], manifests["ctc"]["architecture"]["o0"]["mix"]
            lines += ["", f"The `ctc` reader carries the same glyph net (the same weights), its windows centred on the "
                      f"columns of each run read as o or 0 and mixed as {mix[0]:.2f} x glyph net + {mix[1]:.2f} x "
                      f"reader (fitted on the same validation windows): of the {errs['characters']:,} o/0 characters it "
                      f"answered o or 0 it got {errs['reader']:,} wrong alone and {errs['mix']:,} with the glyph net; "
                      f"on {ctc_o0['val_samples']:,} validation captchas {ctc_o0['validation']['alone']:.2%} -> "
                      f"{ctc_o0['validation']['with_o0']:.2%}."]
    t = manifests[default]["training"]
    stages, soup = [], t.get("soup")
    while soup:
        stages.append(_stage(soup))
        soup = soup.get("started_from", {}).get("soup")
    lines += ["", "How the committed weights were made (both readers in the same joint runs; minutes are single-core "
              "wall time, two runs side by side on the 2 cores):"]
    lines += [f"{k}. {stage}." for k, stage in enumerate(reversed(stages), 1)]
    for v in sorted(manifests, key=lambda v: v != default):
        chunk = manifests[v]["training"].get("lengths")
        if isinstance(chunk, dict) and "samples_seen" in chunk:
            lines += ["", _lengths_note(v, manifests[v], chunk)]
    lines += ["", f"Altogether {t['samples_seen']:,} training samples and {t['seconds'] / 3600:.1f} h of single-core "
              f"training time, from {t['unique_captchas']:,} pool captchas with random shifts; "
              f"{t.get('precision', 'fp32')}."]
    return "\n".join(lines)


LOAD_RESULTS = ROOT / "bench" / "results" / "load.json"


def ceiling_round(results: dict) -> dict | None:
    """The median of the alternating (served /predict/digit, in-process ceiling) rounds."""
    ceiling = results.get("ceiling") or {}
    rounds = ceiling.get("rounds")
    return rounds[ceiling["median_round"] - 1] if rounds else None


def load_markdown(results: dict) -> str:
    """The load bench's tables (bench/load.py prints them; docs/serving.md holds them)."""
    cells, ceiling = results["cells"], results.get("ceiling")
    lines = ["| endpoint | clients | req/s | p50 ms | p95 ms | p99 ms | p99/p50 | non-200 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c['endpoint']} | {c['clients']} | {c['rps']:,.0f} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | "
                     f"{c['p99_ms']:.1f} | {c['p99_ms'] / c['p50_ms']:.1f} | {c['non_200']} |")
    bare = {c["clients"]: c for c in cells if c["endpoint"].startswith("bare")}
    ratios = [f"| {c['endpoint']} | {c['clients']} | {c['rps'] / bare[c['clients']]['rps']:.2f} |"
              for c in cells if c["endpoint"].startswith("POST") and c["clients"] in bare]
    out = []
    if ceiling and ceiling.get("rounds"):
        clients = max(c["clients"] for c in cells)
        out += ["#### /predict/digit against its in-process ceiling", "",
                f"The ceiling is the same work in-process with no HTTP: the route's own prepare and batch functions "
                f"(PNG decode, crop/centre, {ceiling['model']} + the autoencoder's typicality, as for a default "
                f"request), in batches of {ceiling['batch']} on {ceiling['threads']} threads of 1 torch thread, on the "
                f"server's CPUs. Served ({clients} clients, default query parameters) and ceiling were measured "
                f"alternately, {len(ceiling['rounds'])} rounds; the median round is in bold.", "",
                "| round | served req/s | ceiling images/s | served / ceiling | p50 ms | p99 ms | p99/p50 | non-200 |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, r in enumerate(ceiling["rounds"], 1):
            ratio = f"**{r['ratio']:.2f}**" if k == ceiling["median_round"] else f"{r['ratio']:.2f}"
            out.append(f"| {k} | {r['served_rps']:,.0f} | {r['ceiling_images_per_s']:,.0f} | {ratio} | {r['p50_ms']:.1f} "
                       f"| {r['p99_ms']:.1f} | {r['p99_ms'] / r['p50_ms']:.1f} | {r['non_200']} |")
        out.append("")
    out += ["#### Load (HTTP over loopback)", "", *lines, ""]
    if ratios:
        out += ["Throughput relative to the bare endpoint at the same concurrency:", "",
                "| endpoint | clients | x bare |", "|---|---:|---:|", *ratios, ""]
    if results["in_process"]:
        out += ["#### In-process (no HTTP)", "", "| what | batch | images/s | ms per call |", "|---|---:|---:|---:|"]
        out += [f"| {r['what']} | {r['batch']} | {r['images_per_s']:,.0f} | {r['ms']:.2f} |" for r in results["in_process"]]
        out.append("")
    out += ["Conditions: " + "; ".join(f"{k}: {v}" for k, v in results["conditions"].items())]
    return "\n".join(out) + "\n"


def _load_results() -> dict:
    return json.loads(LOAD_RESULTS.read_text())


def render_load_summary() -> str:
    """README: /predict/digit against its ceiling, and every route at the highest concurrency."""
    results = _load_results()
    cells, ceiling, cond = results["cells"], results["ceiling"], results["conditions"]
    top = max(c["clients"] for c in cells)
    bare = next((c for c in cells if c["endpoint"].startswith("bare") and c["clients"] == top), None)
    lines = [f"| endpoint, {top} clients | req/s | p50 ms | p99 ms | p99/p50 | x bare | non-200 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        if c["clients"] == top:
            name = c["endpoint"].replace("bare GET /bench/noop", "bare `GET /bench/noop` (does nothing)")
            name = name if name.startswith("bare") else f"`{name}`"
            lines.append(f"| {name} | {c['rps']:,.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | "
                         f"{c['p99_ms'] / c['p50_ms']:.1f} | {c['rps'] / bare['rps']:.2f} | {c['non_200']} |")
    median = ceiling_round(results)
    text = [f"Measured {cond['date']} on {cond['CPUs']} CPUs ({cond['server']}; server CPUs: {cond['server CPUs']}, "
            f"client CPUs: {cond['client CPUs']}), the demo page's 280x280 PNG:", "", *lines]
    if median is not None:
        text += ["", f"`/predict/digit` serves **{median['ratio']:.2f}x** its in-process ceiling (median of "
                 f"{len(ceiling['rounds'])} alternating rounds: {median['served_rps']:,.0f} req/s against "
                 f"{median['ceiling_images_per_s']:,.0f} images/s for the same prepare and batch functions with no "
                 f"HTTP; p99 {median['p99_ms'] / median['p50_ms']:.1f}x p50). The goal is >= 0.7x with p99 <= 3x p50 "
                 "and no errors."]
    return "\n".join(text)


def render_load_full() -> str:
    return load_markdown(_load_results()).rstrip("\n")


NUMBER_LATENCY = ROOT / "bench" / "results" / "number_latency.json"
NUMBER_PHOTOS = ROOT / "bench" / "results" / "number_photos.json"
NUMBER_ERRORS = ROOT / "bench" / "results" / "number_errors.json"
NUMBER_GOALS = {"whole": 0.98, "digit": 0.996, "drawn": 0.97, "latency_ratio": 2.0}  # issue #15


def _number_training(t: dict) -> str:
    """The reader's training in a sentence: one run, or its chunks (`--init`) added up."""
    chunks = t.get("chunks") or [{"samples_seen": t["samples_seen"], "seconds": t["seconds"]}]
    samples, seconds = sum(c["samples_seen"] for c in chunks), sum(c["seconds"] for c in chunks)
    how = f"{len(chunks)} runs, each from the last one's weights" if len(chunks) > 1 else f"{t['epochs']} epochs"
    return (f"Trained on {samples:,} lines in {seconds / 60:.0f} min of wall clock ({how}) on the 2-CPU development "
            "machine, beside other runs.")


def render_number() -> str:
    """README: the number reader's figures (its manifest) and its latency against /predict/digit
    (bench/number_latency.py --save)."""
    m = json.loads((WEIGHTS / "number_ctc.json").read_text())
    met, t = m["metrics"], m["training"]
    by_length = met["mnist_lines_number_accuracy_by_length"]

    def mark(value: float, goal: float) -> str:
        return f"**{value:.2%}**" if value >= goal else f"{value:.2%} (goal {goal:.1%}, not met)"

    lines = [
        "| evaluation | whole number | per digit | goal |", "|---|---:|---:|---|",
        f"| {met['mnist_test_lines']:,} lines of {met['mnist_test_lines_digits']} MNIST *test* digits (seed "
        f"{met['mnist_test_lines_seed']}) | {mark(met['mnist_lines_number_accuracy'], NUMBER_GOALS['whole'])} | "
        f"{mark(met['mnist_lines_digit_accuracy'], NUMBER_GOALS['digit'])} | >= 98% / >= 99.6% |",
        f"| the first {met['upload_pipeline_lines']:,} of them uploaded as PNG (the service's preprocessing) | "
        f"{met['upload_pipeline_number_accuracy']:.2%} | | as composed |",
        f"| {met['drawn_numbers']} numbers of 1-8 digits drawn like the page's pad (seed {met['drawn_numbers_seed']}), "
        f"uploaded as PNG | {mark(met['drawn_number_accuracy'], NUMBER_GOALS['drawn'])} | "
        f"{met['drawn_digit_accuracy']:.2%} | >= 97% |",
        "", "Whole-number accuracy by length (MNIST-test lines): " + ", ".join(
            f"{n} digit{'s' if n != '1' else ''} {v:.2%}" for n, v in by_length.items()) + ".",
        "", _number_training(t)]
    if "glyph" in t:
        g, alone = t["glyph"], met["reader_alone"]
        chunks = g.get("chunks") or [g]
        minutes, epochs = sum(c["seconds"] for c in chunks) / 60, sum(c["epochs"] for c in chunks)
        where = ("cut from the ink at the upload's own resolution" if g["data"].get("crops_from") == "source"
                 else "cut from the 28 px line")
        whole = " and the training digits 0-53,999 whole" if g["data"].get("mnist_digits") else ""
        varied = g["data"].get("augmentation", "shifts of up to 1 px")  # older manifests: shifts, unrecorded
        lines += ["", f"Each digit is read again by the glyph CNN ({g['parameters']:,} parameters) from an MNIST-style "
                      f"crop of its span ({where}), and the two are mixed with weights {g['mix'][0]:g} (glyph) and {g['mix'][1]:g} "
                      f"(reader) fitted on {g['validation']['lines']:,} validation lines. It trained on "
                      f"{g['data']['training_crops']:,} crops cut from {g['data']['lines']:,} training lines where the "
                      f"reader read them{whole}, augmented with {varied}, for {minutes:.0f} min ({epochs} epochs). The reader alone: "
                      f"{alone['mnist_lines_number_accuracy']:.2%} whole, {alone['mnist_lines_digit_accuracy']:.2%} per "
                      "digit on the same test lines."]
    reread = m["architecture"].get("reread")
    if reread and "reread" in met:
        f = met["reread"]
        scales = ", ".join(f"{s:g}" for s in reread["scales"])
        lines += ["", f"A line whose text comes out less probable than {reread['below']:g} ({f['reread_share']:.1%} of "
                      f"{f['validation_lines']:,} validation lines) is read again, its ink scaled to {scales} times "
                      "its size, and the texts vote, each counting its probability. On those validation lines: "
                      f"{f['read_once']['number_accuracy']:.2%} whole / {f['read_once']['digit_accuracy']:.2%} per digit "
                      f"read once, {f['with_rereads']['number_accuracy']:.2%} / {f['with_rereads']['digit_accuracy']:.2%} "
                      "with the second readings."]
    if NUMBER_ERRORS.is_file():
        e = json.loads(NUMBER_ERRORS.read_text())
        once = e["read_once_right_length"]
        lines += ["", f"Where the errors left come from (`bench/number_errors.py`, {e['lines']:,} validation lines, "
                      f"{e['digit_errors']} digit errors in {e['wrong_lines']} wrong lines): "
                      f"{e['misread_alone']} of the {e['validation_digits']:,} validation digits are misread by the glyph "
                      f"net even alone (odd or mislabelled MNIST digits), and {e['wrong_lines_holding_a_digit_misread_alone']} "
                      f"wrong lines ({e['digit_errors_in_those_lines']} digit errors) hold one of them; "
                      f"{e['wrong_length_lines']} lines are read at the wrong length. Of the digits of lines read once at "
                      f"the right length, {once['wrong']} are wrong: {once['misread_alone']} misread alone, "
                      f"{once['reader_wrong_glyph_right']} where the reader outvoted a right glyph net, "
                      f"{once['glyph_wrong_reader_right']} the other way round, {once['both_wrong']} both wrong."]
    if NUMBER_PHOTOS.is_file():
        photos = json.loads(NUMBER_PHOTOS.read_text())
        lines += ["", f"The first {photos['lines']:,} of the MNIST-test lines as a PNG and as phone photos "
                      "(`bench/number_photos.py`, `testkit/photo.py`: grey paper, sensor noise, JPEG), read through the "
                      "service's preprocessing, and without its photo steps (the paper's uneven light divided "
                      "out; a ruled or squared paper's printed lines and specks far from the writing dropped):", "",
                  "| upload | whole number | per digit | without the photo steps |", "|---|---:|---:|---:|"]
        for row in photos["dresses"].values():
            served, before = row["as_served"], row["without_photo_steps"]
            lines.append(f"| {row['about']} | {served['number_accuracy']:.2%} | {served['digit_accuracy']:.2%} | "
                         f"{before['number_accuracy']:.2%} |")
    if NUMBER_LATENCY.is_file():
        bench = json.loads(NUMBER_LATENCY.read_text())
        r = bench["routes"]
        lines += ["", f"Latency, one request at a time, alternating routes ({bench['requests']} each, "
                      f"{bench['cpus']} CPUs, `bench/number_latency.py`):", "",
                  "| route | upload | p50 ms | p95 ms |", "|---|---|---:|---:|"]
        for name in ("digit", "number"):
            lines.append(f"| `{r[name]['route']}` | {bench['uploads'][name]} | {r[name]['p50_ms']:.1f} | "
                         f"{r[name]['p95_ms']:.1f} |")
        lines += ["", f"A 4-digit number takes **{bench['p50_ratio']:.2f}x** the time of one digit (goal: within 2x)."]
        if bench.get("reread_ms"):
            r = bench["reread_ms"]
            lines[-1] += (f" Read again as an unsure line, the same number's reader time goes from {r['once']:.1f} to "
                          f"{r['again']:.1f} ms (in process), {r['unsure_p50_ratio']:.2f}x a digit.")
    return "\n".join(lines)


FINETUNE_RESULTS = ROOT / "bench" / "results" / "captcha_finetune.json"
STYLE_NAMES = {"fonts": "captcha package, DejaVu Sans Bold + Liberation Serif, 200x70",
               "wheezy": "wheezy.captcha (background, warp, rotate, offset, curve, noise, smooth), 200x75",
               "lines": "PIL text, rotated and jittered, interference lines and dots, 180x60"}


def render_finetune() -> str:
    """README: fine-tuned vs from scratch vs ddddocr per foreign style (bench/captcha_finetune.py --save)."""
    if not FINETUNE_RESULTS.is_file():
        return "(not measured yet: run `.venv/bin/python -m bench.captcha_finetune --save bench/results/captcha_finetune.json`)"
    r = json.loads(FINETUNE_RESULTS.read_text())
    lines = [f"From {r['train']:,} labelled captchas of 4-6 characters per style (800 trained on, 200 held out by the "
             f"trainer), a {r['minutes_budget']:g}-minute training budget per run on one CPU thread, read on "
             f"{r['test']:,} fresh ones (full string; per character in brackets). Minutes: each fine-tune's whole "
             "wall clock, from start to written reader (loading, training, BatchNorm statistics, views):", "",
             "| style | fine-tuned from `captcha_ctc` | minutes | fine-tuned from `captcha_general` | minutes | "
             "same budget from scratch | shipped `ctc` as is | shipped `general` as is | ddddocr | best possible |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for style, row in r["styles"].items():
        def cell(k):
            return f"{row[k]['full_string_accuracy']:.1%} ({row[k]['char_accuracy']:.1%})" if k in row else "-"

        def minutes(k):
            if k not in row:
                return "-"
            notes = (["bf16"] if row[k].get("precision", "fp32").startswith("bf16") else []) + \
                ([f"reads {row[k]['views']} views"] if row[k].get("views", 1) > 1 else [])
            spent = row[k].get("wall_minutes", row[k]["minutes"])  # older files: the training time only
            return f"{spent:.1f}" + (f" ({', '.join(notes)})" if notes else "")
        runs = [k for k in ("finetuned", "finetuned_from_general", "scratch", "ddddocr") if k in row]
        best = max(runs, key=lambda k: row[k]["full_string_accuracy"])
        cells = {k: (f"**{cell(k)}**" if k == best else cell(k))
                 for k in ("finetuned", "finetuned_from_general", "scratch", "shipped_ctc", "shipped_general", "ddddocr")}
        ceiling = f"{row['best_possible']:.1%}" if "best_possible" in row else "-"
        lines.append(f"| {STYLE_NAMES.get(style, style)} | {cells['finetuned']} | {minutes('finetuned')} | "
                     f"{cells['finetuned_from_general']} | {minutes('finetuned_from_general')} | "
                     f"{cells['scratch']} | {cells['shipped_ctc']} | {cells['shipped_general']} | {cells['ddddocr']} | "
                     f"{ceiling} |")
    if all("best_possible" in row for row in r["styles"].values()):
        def i_and_l(row, k):
            return f"{row[k]['i_and_l_right']:.0%} of {row[k]['i_and_l']}" if "i_and_l_right" in row.get(k, {}) else "-"
        lines += ["", "Best possible: the full string a perfect case-insensitive reader can expect if a capital I "
                  "and a small l drawn in a sans font (both of wheezy's fonts, one of the two of the other styles: "
                  "there the two are the same solid bar) are each a coin toss and nothing else is misread "
                  "(`training/captcha_styles.best_possible` over the same test texts). An estimate, not a bound: a "
                  "few % of height can tip a guess, and other look-alikes (0 and O) are not counted. Of the I and l "
                  "characters in answers of the right length, read right (fine-tuned from `captcha_general` vs "
                  "ddddocr): " + "; ".join(f"{style} {i_and_l(row, 'finetuned_from_general')} vs {i_and_l(row, 'ddddocr')}"
                                           for style, row in r["styles"].items()) + "."]
    for start in ("ctc", "general"):
        if r.get(f"{start}_samples_seen") != Manifest.read(WEIGHTS / f"captcha_{start}.json").samples_seen_in_all():
            # the shipped columns are read afresh by every bench run, the fine-tunes only by a run that redoes them
            lines += ["", f"The runs fine-tuned from `captcha_{start}` started from an earlier `{start}` than the one "
                      f"served now (and unless the bench has run since, so was the shipped `{start}` column): rerun "
                      f"the bench with `--starts {start} --no-scratch --merge` to update them."]
    return "\n".join(lines)


GENERAL_RESULTS = ROOT / "bench" / "results" / "captcha_general.json"
KIND_NAMES = {"seed": "the seed's generator", "mix": "in the training mix", "foreign": "fine-tuning bench style",
              "zero-shot": "**held out** (zero-shot)"}


def render_general() -> str:
    """README: the general reader vs the seed-style reader vs ddddocr per style (bench/captcha_general.py --save)."""
    if not GENERAL_RESULTS.is_file():
        return "(not measured yet: run `.venv/bin/python bench/captcha_general.py --save bench/results/captcha_general.json`)"
    r = json.loads(GENERAL_RESULTS.read_text())
    readers = r["readers"]
    general = readers.get("general", {})
    lines = [f"{r['count']:,} fresh captchas per style, read one PNG at a time through the served path on "
             f"{r['threads']} CPU thread(s); full string (per character in brackets); \"sure\": answers with "
             f"confidence >= {r['sure']}, and the share of *all* answers that are sure and wrong "
             f"(`general` at temperature {general.get('temperature', 1.0)}, `ctc` at "
             f"{readers.get('ctc', {}).get('temperature', 1.0)}):", "",
             "| style | kind | `general` | `ctc` (seed-style) | ddddocr | `general` sure / sure & wrong | "
             "`ctc` sure / sure & wrong | ms per image (general / ctc / ddddocr) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    above, mix_ok, mix_total, calibrated = 0, 0, 0, 0
    for name, row in r["styles"].items():
        rd = row["readers"]

        def cell(k):
            if k not in rd:
                return "-"
            return f"{rd[k]['full_string_accuracy']:.1%} ({rd[k]['char_accuracy']:.1%})"

        def sure(k):
            return f"{rd[k]['sure_share']:.1%} / {rd[k]['wrong_and_sure']:.1%}" if k in rd and "sure_share" in rd[k] else "-"

        ms = " / ".join(f"{rd[k]['ms_per_image']:.1f}" if k in rd else "-" for k in ("general", "ctc", "ddddocr"))
        lines.append(f"| {name} | {KIND_NAMES.get(row['kind'], row['kind'])} | {cell('general')} | {cell('ctc')} | "
                     f"{cell('ddddocr')} | {sure('general')} | {sure('ctc')} | {ms} |")
        if "general" in rd and "ddddocr" in rd:
            above += rd["general"]["full_string_accuracy"] > rd["ddddocr"]["full_string_accuracy"]
        if row["kind"] == "mix" and "general" in rd:
            mix_total += 1
            mix_ok += rd["general"]["full_string_accuracy"] >= 0.95
        calibrated += all(rd[k].get("wrong_and_sure", 1.0) < 0.02 for k in ("general", "ctc") if k in rd)
    styles = len(r["styles"])
    lines += ["", f"`general` reads above ddddocr on **{above} of {styles}** styles and at >= 95% on **{mix_ok} of "
                  f"{mix_total}** styles of its training mix (the goal: all of them). Sure and wrong stays under 2% "
                  f"of the answers for both readers on **{calibrated} of {styles}** styles (the goal: all of them)."]
    return "\n".join(lines)


BLOCKS = {"model-table": render, "captcha-results": render_captcha, "number-results": render_number,
          "captcha-finetune": render_finetune, "captcha-general": render_general, "load-summary": render_load_summary}
DOCS_BLOCKS = {"load-bench": render_load_full}  # docs/serving.md


def replace_block(text: str, table: str, name: str = "model-table") -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {start} ... {end} block to fill")
    return pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)


def render_all(text: str, blocks: dict = BLOCKS) -> str:
    """`text` (README.md, or docs/serving.md with DOCS_BLOCKS) with every generated block rendered afresh."""
    for name, make in blocks.items():
        text = replace_block(text, make(), name)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    if args.write:
        for path, blocks in ((ROOT / "README.md", BLOCKS), (ROOT / "docs" / "serving.md", DOCS_BLOCKS)):
            path.write_text(render_all(path.read_text(), blocks))
    for make in [*BLOCKS.values(), *DOCS_BLOCKS.values()]:
        print(make(), end="\n\n")


if __name__ == "__main__":
    main()
