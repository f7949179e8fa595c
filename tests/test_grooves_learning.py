"""Learning on human-played grooves: a short CycleGAN run on the grooves corpus moves the rhythm
pattern of held-out takes toward the true drums'.

grooves (the five test takes: 3 train, 2 held-out test) -> small mel windows (64 bins,
64 frames, the codec of pipelines/windows.py) -> a reduced CycleGAN on Ray Train ->
for each held-out window, score's rhythm features (infer.features: onset agreement with the
true drums, the same rhythm pattern, pulsing at the true drums' tempo): trained vs the same
network at its seeded initialisation, and vs the "real drums of another clip" baseline.  Slow (minutes): `pytest -m slow -s tests/test_grooves_learning.py`.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from groove_windows import PARAMS, corpus_windows, generate, held_out, write_windows
from infer.features import RHYTHM_FEATURES, rhythm_features
from train.checkpoint import load_generator
from train.config import TrainConfig
from train.models import build_generator

OPTIONS = dict(ngf=16, ndf=16, n_blocks=3, max_steps=400, checkpoint_every=400, log_every=50,
               images_per_epoch=2)


def rhythm(generated: np.ndarray, drums: np.ndarray, bass: np.ndarray) -> dict[str, float]:
    fps = PARAMS.sample_rate / PARAMS.hop_length
    rows = [rhythm_features(g, d, b, fps) for g, d, b in zip(generated, drums, bass)]
    return {k: float(np.mean([r[k] for r in rows])) for k in RHYTHM_FEATURES}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 25 min on the shared 2-core machine at load average ~35
def test_training_on_grooves_improves_the_rhythm_pattern(tmp_path, ray_local):
    from train.trainer import train

    table = corpus_windows(tmp_path)
    data = write_windows(table, tmp_path / "windows")
    bass, drums = held_out(table)
    assert len(bass) >= 8

    config = TrainConfig(**{k: v for k, v in OPTIONS.items() if k in ("ngf", "ndf", "n_blocks")})
    torch.manual_seed(config.seed)
    before = rhythm(generate(build_generator(config.to_dict()).eval(), bass), drums, bass)
    other_clip = rhythm(np.roll(drums, 1, axis=0), drums, bass)  # real drums, wrong clip

    started = time.perf_counter()
    summary = train(data, str(tmp_path / "run"), OPTIONS, num_workers=2)
    minutes = (time.perf_counter() - started) / 60
    trained, _, _ = load_generator(summary.checkpoint)
    after = rhythm(generate(trained, bass), drums, bass)
    print(f"\nonset agreement on {len(bass)} held-out groove windows ({table.num_rows} in all), "
          f"after {summary.step} steps ({minutes:.1f} min, 2 workers):")
    for name, scores in (("untrained", before), ("trained", after), ("another clip's drums", other_clip)):
        print(f"  {name:22s} " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    # The rhythm pattern moves the right way.  Onset agreement is printed, not asserted: since the
    # rhythm gate became bass_independence (issue #30) the untrained network's noise, which does
    # not follow the bass, passes the gate whole and scores 0.06-0.07 (the best of 5 lags of a
    # correlation), and this small run gained only 0.01-0.02 over it (two runs, 2026-12-05).
    assert after["rhythm_pattern"] > before["rhythm_pattern"] + 0.05
