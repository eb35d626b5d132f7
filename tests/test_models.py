"""Network shapes and the checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.catalog import CATALOG, build, config_for
from models.checkpoint import load_checkpoint, save_checkpoint
from models.digits import DigitRNN, DigitRNNConfig
from models.manifest import Manifest

WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"

CONFIGS = [
    DigitRNNConfig(cell="rnn", hidden_size=64, num_layers=7),
    DigitRNNConfig(cell="lstm", hidden_size=32, num_layers=2),
    DigitRNNConfig(cell="gru", hidden_size=32, num_layers=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.cell)
def test_digit_net_shapes(config):
    model = DigitRNN(config).eval()
    x = torch.randn(5, 28, 28)
    logits = model(x)
    assert logits.shape == (5, 10)
    last, steps = model(x, return_steps=True)
    assert steps.shape == (5, 28, 10)
    # The per-row answers end in the final answer.
    torch.testing.assert_close(last, logits)
    torch.testing.assert_close(steps[:, -1], logits)
    # Also takes the (B, 1, 28, 28) image layout.
    torch.testing.assert_close(model(x.unsqueeze(1)), logits)


def test_reference_rnn_architecture():
    model = DigitRNN(DigitRNNConfig())
    assert isinstance(model.rnn, torch.nn.RNN)
    assert (model.rnn.input_size, model.rnn.hidden_size, model.rnn.num_layers) == (28, 64, 7)
    assert model.rnn.nonlinearity == "tanh" and model.rnn.batch_first
    assert (model.head.in_features, model.head.out_features) == (64, 10)


def test_steps_are_causal():
    """Row t's answer depends only on rows 0..t: changing the last rows leaves earlier steps alone."""
    model = DigitRNN(DigitRNNConfig(cell="gru", hidden_size=16, num_layers=2)).eval()
    x = torch.randn(2, 28, 28)
    y = x.clone()
    y[:, 20:] = torch.randn(2, 8, 28)
    _, sx = model(x, return_steps=True)
    _, sy = model(y, return_steps=True)
    torch.testing.assert_close(sx[:, :20], sy[:, :20])
    assert not torch.allclose(sx[:, 20:], sy[:, 20:])


def test_unknown_cell_is_refused():
    with pytest.raises(ValueError, match="unknown cell"):
        DigitRNN(DigitRNNConfig(cell="transformer"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.cell)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, config):
    torch.manual_seed(0)
    model = DigitRNN(config).eval()
    json_path = save_checkpoint(model, {"task": "digits", "cell": config.cell, "architecture": config.to_dict()},
                                tmp_path, f"digits_{config.cell}")
    assert (tmp_path / f"digits_{config.cell}.safetensors").is_file()
    manifest = json.loads(json_path.read_text())
    assert manifest["architecture"] == config.to_dict()

    loaded, loaded_manifest = load_checkpoint(json_path)
    assert not loaded.training
    x = torch.randn(3, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded_manifest.name == f"digits_{config.cell}"


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    config = DigitRNNConfig(cell="lstm", hidden_size=64, num_layers=2)
    model = DigitRNN(config).eval()
    manifest = {"task": "digits", "variant": "lstm", "architecture": config.to_dict()}
    full = save_checkpoint(model, manifest, tmp_path, "full")
    half = save_checkpoint(model, manifest, tmp_path, "half", storage="float16")
    full_bytes, half_bytes = (p.with_suffix(".safetensors").stat().st_size for p in (full, half))
    assert half_bytes < 0.55 * full_bytes
    assert json.loads(half.read_text())["storage"] == "float16" and "storage" not in json.loads(full.read_text())

    loaded, loaded_manifest = load_checkpoint(half)
    assert loaded_manifest.storage == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(8, 28, 28)
    with torch.inference_mode():
        want, got = model(x), loaded(x)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)  # half-precision rounding of the weights only
    assert not torch.equal(got, want)  # the weights really went through float16
    assert torch.equal(got.argmax(1), want.argmax(1))
    with pytest.raises(ValueError, match="storage must be one of"):
        save_checkpoint(model, manifest, tmp_path, "bad", storage="int8")


def test_checkpoint_with_wrong_shapes_is_rejected(tmp_path):
    model = DigitRNN(CONFIGS[2])
    json_path = save_checkpoint(model, {"task": "digits", "variant": "gru", "architecture": CONFIGS[2].to_dict()},
                                tmp_path, "m")
    manifest = json.loads(json_path.read_text())
    manifest["architecture"]["hidden_size"] = 48  # no longer matches the stored tensors
    json_path.write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(json_path)


# -- the manifest schema and the catalog -----------------------------------------------------
def test_every_committed_manifest_reads_and_writes_back_unchanged():
    for path in sorted(WEIGHTS.glob("*.json")):
        raw = json.loads(path.read_text())
        manifest = Manifest.from_dict(raw)
        assert manifest.to_dict() == raw, path.name  # one schema: nothing lost, nothing renamed
        assert (manifest.task, manifest.variant) in CATALOG
        assert manifest.name == path.stem and manifest.input, path.name


def test_a_manifest_written_before_the_shared_schema_still_loads(tmp_path):
    """Digit manifests used to name the variant `cell`."""
    model = DigitRNN(CONFIGS[1]).eval()
    json_path = save_checkpoint(model, {"task": "digits", "variant": "lstm", "architecture": CONFIGS[1].to_dict()},
                                tmp_path, "old")
    legacy = json.loads(json_path.read_text())
    legacy["cell"] = legacy.pop("variant")
    json_path.write_text(json.dumps(legacy))
    loaded, manifest = load_checkpoint(json_path)
    assert manifest.variant == "lstm" and "cell" not in manifest.to_dict()
    x = torch.randn(2, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    ({"epochs": 3}, "unknown keys \\['epochs'\\]"),
    ({"variant": None}, "lacks \\['variant'\\]"),
    ({"architecture": [1, 2]}, "must be an object"),
])
def test_a_manifest_outside_the_schema_is_refused(change, message):
    data = {"task": "digits", "variant": "gru", "architecture": CONFIGS[2].to_dict(), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        Manifest.from_dict(data)


def test_the_catalog_builds_each_variant_from_its_config():
    for (task, variant), spec in CATALOG.items():
        manifest = Manifest(task=task, variant=variant,
                            architecture=spec.config(**({"cell": variant} if task == "digits" else {})).__dict__)
        assert isinstance(build(manifest), spec.network)
        assert isinstance(config_for(manifest), spec.config)
    with pytest.raises(ValueError, match="manifest variant 'gru' but architecture cell 'lstm'"):
        build(Manifest(task="digits", variant="gru", architecture={"cell": "lstm"}))
