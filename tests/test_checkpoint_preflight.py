"""Checkpoints are checked before Ray starts: a damaged file is named; in a run folder the
newest readable checkpoint is taken, with a warning; paths are made absolute first."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from cycledrums_cli import main
from pipelines.mel import MelParams
from train.synth_windows import write_synth_windows

PARAMS = MelParams(n_mels=64, window_frames=64, overlap_frames=16)


def _checkpoint(folder, step: int) -> str:
    from train.checkpoint import write_checkpoint
    from train.config import TrainConfig
    from train.models import build_networks

    torch.manual_seed(step)
    config = TrainConfig(ngf=8, ndf=8, n_blocks=2, max_steps=10).resolved().to_dict()
    config["mel_params"] = PARAMS.to_dict()
    nets = build_networks(config)
    state = {"optimizers": {}, "schedulers": {}, "step": step, "epoch": 0, "world_size": 1}
    write_checkpoint(str(folder), {k: v.state_dict() for k, v in nets.items()}, state, config,
                     step=step, epoch=0)
    return str(folder)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        _checkpoint(run / "train" / f"checkpoint_{step:09d}", step)
    return run


def test_damaged_newest_checkpoint_falls_back_with_a_warning(run_dir, caplog):
    from train.checkpoint import CheckpointCorruptError, usable_checkpoint

    newest = run_dir / "train" / "checkpoint_000000002" / "weights.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a write cut short
    with caplog.at_level(logging.WARNING):
        checkpoint, _, skipped = usable_checkpoint(str(run_dir))
    assert checkpoint.endswith("checkpoint_000000001")
    assert [os.path.basename(c) for c, _ in skipped] == ["checkpoint_000000002"]
    assert str(newest) in caplog.text
    # Named directly, the damaged checkpoint is refused with its file named.
    with pytest.raises(CheckpointCorruptError, match="weights.pt"):
        usable_checkpoint(str(newest.parent))


def test_non_json_config_and_garbage_weights_are_named_without_a_traceback(run_dir, tmp_path, capsys):
    checkpoint = run_dir / "train" / "checkpoint_000000002"
    (checkpoint / "config.json").write_text("{not json")
    out = tmp_path / "gen"
    bass = tmp_path / "bass"  # beside OUTPUT: an OUTPUT inside an INPUT is refused first
    assert main(["generate", str(checkpoint), str(bass), str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "not valid JSON" in err and "Traceback" not in err
    (checkpoint / "config.json").write_text(json.dumps({"mel_params": PARAMS.to_dict()}))
    (checkpoint / "weights.pt").write_bytes(b"\x00" * 64)
    assert main(["generate", str(checkpoint), str(bass), str(out)]) == 2
    err = capsys.readouterr().err
    assert "weights.pt" in err and "Traceback" not in err
    assert not out.exists()


def test_generate_output_that_is_a_file_is_refused_before_ray(run_dir, tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    assert main(["generate", str(run_dir), str(tmp_path / "bass"), str(out)]) == 2
    assert "existing file" in capsys.readouterr().err and out.read_text() == "keep me"


def test_train_preflight_resumes_from_the_newest_readable_checkpoint(run_dir, tmp_path, monkeypatch,
                                                                     caplog):
    from train.trainer import TrainSetupError, preflight

    data = tmp_path / "data"
    write_synth_windows(str(data), tracks=3, seconds=8.0, params=PARAMS)
    (run_dir / "train" / "checkpoint_000000002" / "state.pt").write_bytes(b"garbage")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        plan = preflight("data", "run", {}, resume=True)
    # Relative paths come back absolute (Ray Train workers run in folders of their own).
    assert plan.run_dir == str(run_dir) and plan.data == str(data)
    assert plan.resume_checkpoint == str(run_dir / "train" / "checkpoint_000000001")
    assert plan.damaged_checkpoints == ["checkpoint_000000002"]
    assert "state.pt" in caplog.text
    (run_dir / "train" / "checkpoint_000000001" / "config.json").write_text("][")
    with pytest.raises(TrainSetupError, match="no readable checkpoint"):
        preflight("data", "run", {}, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainSetupError, match="existing file"):
        preflight("data", "file", {})


def test_resume_of_a_run_at_or_past_its_length_says_so_without_ray(run_dir, tmp_path, monkeypatch, capsys):
    """#31 item 11: train --resume with --max-steps at or below the run's step (2) answers in one
    line before Ray starts (it used to start Ray, train nothing, print "trained to step 2/1")."""
    import cluster.ray_runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster.ray_runtime, "init_ray", no_ray)
    data = tmp_path / "data"
    write_synth_windows(str(data), tracks=3, seconds=8.0, params=PARAMS)
    assert main(["train", str(data), str(run_dir), "--resume", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "already at step 2" in err and "--max-steps" in err and "Traceback" not in err, err
    assert main(["train", str(data), str(run_dir), "--resume", "--max-steps", "2"]) == 0
    assert "already trained to step 2/2" in capsys.readouterr().out
