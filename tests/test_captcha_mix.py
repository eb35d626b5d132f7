"""The general reader's generator mix: every family reproducible from a seed, labels of the
lengths it claims, something drawn; shards round-trip; held-out families stay out of training."""

from __future__ import annotations


import numpy as np
import pytest

from models.captcha_common import CHARSET
from training.captcha_mix import (FAMILIES, HEIGHT, HELD_OUT_FAMILIES, HELD_OUT_FONTS, MAX_LENGTH, TRAIN_FAMILIES,
                                  WIDTH, encode, load_shards, mix_fonts, parse_weights, render_shard, samples,
                                  shard_jobs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_are_reproducible_and_drawn(family):
    first = [(t, np.asarray(im)) for _, (t, im) in zip(range(3), samples(family, 11))]
    again = [(t, np.asarray(im)) for _, (t, im) in zip(range(3), samples(family, 11))]
    other = [t for _, (t, _) in zip(range(3), samples(family, 12))]
    assert [t for t, _ in first] == [t for t, _ in again]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert [t for t, _ in first] != other
    for text, pixels in first:
        assert 1 <= len(text) <= MAX_LENGTH and set(text.lower()) <= set(CHARSET)
        assert pixels.ndim == 3 and pixels.shape[0] >= 30 and pixels.astype(np.float32).std() > 8


def test_training_lengths_cover_one_to_eight():
    lengths = {len(t) for _, (t, _) in zip(range(300), samples("pil_warp", 5))}
    assert lengths == set(range(1, MAX_LENGTH + 1))
    assert {len(t) for _, (t, _) in zip(range(40), samples("wheezy", 5, lengths=(4, 4)))} == {4}


def test_held_out_families_and_fonts_stay_out_of_training():
    assert set(HELD_OUT_FAMILIES) & set(TRAIN_FAMILIES) == set()
    assert set(HELD_OUT_FAMILIES) | set(TRAIN_FAMILIES) == set(FAMILIES)
    assert not any(held in font for font in mix_fonts() for held in HELD_OUT_FONTS)


def test_family_indices_of_existing_shards_never_change():
    # a shard stores each captcha's family as its index in FAMILIES: new families go last
    assert list(FAMILIES)[:8] == ["seed", "captcha_fonts", "wheezy", "pil_lines", "pil_warp", "multicolor", "claptcha",
                                  "pil_tiles"]


def test_encode_pads_and_folds_case():
    assert encode("aB3").tolist() == [10, 11, 3] + [-1] * (MAX_LENGTH - 3)


def test_shards_round_trip(tmp_path):
    jobs = shard_jobs(tmp_path, count=10, seed=40, per_shard=6, families=("seed", "pil_lines"))
    assert [sum(counts.values()) for _, counts, _, _ in jobs] == [6, 4]
    for path, counts, seed, lengths in jobs:
        render_shard(tmp_path / path.split("/")[-1], counts, seed, lengths=lengths)
    assert shard_jobs(tmp_path, count=10, seed=40, per_shard=6) == []  # done shards are not redone
    x, y, family = load_shards(tmp_path)
    assert x.shape == (10, HEIGHT, WIDTH) and x.dtype == np.uint8
    assert y.shape == (10, MAX_LENGTH) and ((y >= -1) & (y < len(CHARSET))).all()
    assert sorted(set(family.tolist())) == sorted(list(FAMILIES).index(f) for f in ("seed", "pil_lines"))
    # each row's label is a prefix of classes then padding, never a gap
    for row in y:
        n = int((row >= 0).sum())
        assert (row[:n] >= 0).all() and (row[n:] == -1).all() and n >= 1


def test_weights_set_each_familys_share_of_a_shard(tmp_path):
    weights = parse_weights("seed=0.5,pil_tiles=1.5", ("seed", "wheezy", "pil_tiles"))
    assert weights == {"seed": 0.5, "wheezy": 1.0, "pil_tiles": 1.5}
    [(_, counts, _, _)] = shard_jobs(tmp_path, count=300, seed=1, per_shard=300,
                                     families=("seed", "wheezy", "pil_tiles"), weights=weights)
    assert counts == {"seed": 50, "wheezy": 100, "pil_tiles": 150}
    assert parse_weights(None, TRAIN_FAMILIES) is None


@pytest.mark.parametrize("text", ["tiles=2", "seed=abc", "seed=-1", "seed", "seed=0,wheezy=0"])
def test_bad_weights_are_refused_with_the_reason(text):
    with pytest.raises(SystemExit, match="--weights"):
        parse_weights(text, ("seed", "wheezy"))
