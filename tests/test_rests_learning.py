"""Drums where the bass rests (issue #30): a model trained on grooves whose bass lines rest goes on
playing drums there, at the true drums' level and not as a hum.

grooves with `--bass-rests 0.3` (the five test takes) -> small mel windows -> a reduced Pix2Pix,
the real-song recipe's model, on Ray Train -> on the held-out windows, infer/bass_rests.py's
figures over the rest frames alone (the level against the true drums', onset agreement with them,
steadiness: ~1 a hum), trained vs the same network at its seeded initialisation and vs another
clip's real drums.  Slow (minutes): `pytest -m slow -s tests/test_rests_learning.py`.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from groove_windows import PARAMS, corpus_windows, generate, held_out, write_windows
from infer.bass_rests import rest_figures
from train.checkpoint import load_generator
from train.config import TrainConfig
from train.models import build_generator

ARCHITECTURE = dict(model="pix2pix", ngf=16, ndf=16, unet_downs=6)  # 6 levels: 64 -> 1
OPTIONS = ARCHITECTURE | dict(max_steps=600, checkpoint_every=600, log_every=100,
                              images_per_epoch=0)
FIGURES = ("level_diff_db", "onset_agreement", "steadiness")


def in_the_rests(generated: np.ndarray, drums: np.ndarray, bass: np.ndarray) -> tuple[int, dict]:
    """(clips with rests, mean figures over them) for generated drums [n, mels, frames]."""
    rows = [f for f in (rest_figures(g, d, b, PARAMS) for g, d, b in zip(generated, drums, bass)) if f]
    means = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in FIGURES}
    return len(rows), means


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_trained_model_plays_drums_where_the_bass_rests(tmp_path, ray_local):
    from train.trainer import train

    table = corpus_windows(tmp_path, "--bass-rests", "0.3")
    data = write_windows(table, tmp_path / "windows")
    bass, drums = held_out(table)

    config = TrainConfig(**ARCHITECTURE).resolved()
    torch.manual_seed(config.seed)
    n, before = in_the_rests(generate(build_generator(config.to_dict()).eval(), bass), drums, bass)
    _, other_clip = in_the_rests(np.roll(drums, 1, axis=0), drums, bass)
    assert n >= 2, f"only {n} held-out windows with rests: the test needs rests to judge"

    started = time.perf_counter()
    summary = train(data, str(tmp_path / "run"), OPTIONS, num_workers=1)
    minutes = (time.perf_counter() - started) / 60
    trained, _, _ = load_generator(summary.checkpoint)
    _, after = in_the_rests(generate(trained, bass), drums, bass)
    print(f"\nwhere the bass rests, {n} of {len(bass)} held-out windows, after {summary.step} "
          f"steps ({minutes:.1f} min):")
    for name, figures in (("untrained", before), ("trained", after), ("another clip's drums", other_clip)):
        print(f"  {name:22s} " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    # The untrained network hums there (steadiness ~1); real drums sit near 0.25.
    assert after["steadiness"] < 0.5 < before["steadiness"]
    # At the true drums' level: a copy of the resting bass is 40 dB under, a hum well over.
    assert abs(after["level_diff_db"]) < 6.0
    # Its hits line up with the true drums' more than the untrained network's do.
    assert after["onset_agreement"] > before["onset_agreement"] + 0.02
