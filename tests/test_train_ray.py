"""`cycledrums train` on a local Ray: 2 CPU workers, small networks, synth windows.

One module-scoped run (3 of 6 steps, stopped early) is shared: the first tests
inspect its checkpoint, then it is resumed, and a fine-tuning run on S3 starts
from its weights.  Windows are 64x64 (n_mels 64) to keep steps fast.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from pipelines.mel import MelParams
from train.checkpoint import (list_checkpoints, load_generator, read_progress, read_state,
                              read_weights, resolve_checkpoint)
from train.config import TrainConfig, uses_bf16
from train.models import build_networks
from train.runlog import read_metrics
from train.synth_windows import write_synth_windows

PARAMS = MelParams(n_mels=64, window_frames=64, overlap_frames=16)
SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "2"]
# 12 train windows / 2 workers / batch 1 = 6 steps per epoch.
STEPS_PER_EPOCH = 6


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    table = write_synth_windows(str(root / "data"), tracks=3, seconds=8.0, params=PARAMS)
    assert table.column("split").to_pylist().count("train") == 2 * STEPS_PER_EPOCH
    return str(root / "data")


def cli(*args) -> int:
    from cycledrums_cli import main

    return main(["train", *map(str, args)])


@pytest.fixture(scope="module")
def first_run(windows, ray_local, tmp_path_factory):
    """A 2-worker CycleGAN run of 6 steps, stopped after 3 (one checkpoint)."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "first")
    rc = cli(windows, run_dir, "--num-workers", 2, *SMALL, "--max-steps", 6,
             "--checkpoint-every", 3, "--stop-after-steps", 3, "--log-every", 1,
             "--images-per-epoch", 2)
    assert rc == 0
    return run_dir


@pytest.mark.timeout(300)
def test_short_run_writes_checkpoints_with_replicas_in_sync(first_run, windows):
    checkpoints = list_checkpoints(first_run)
    assert [os.path.basename(c) for c in checkpoints] == ["checkpoint_000000003"]
    checkpoint = checkpoints[0]
    assert resolve_checkpoint(first_run) == checkpoint
    assert read_progress(checkpoint) == {"step": 3, "epoch": 0}
    config = json.load(open(os.path.join(checkpoint, "config.json")))
    assert config["model"] == "cyclegan" and (config["ngf"], config["n_blocks"]) == (8, 2)
    assert MelParams.from_dict(config["mel_params"]) == PARAMS
    weights = torch.load(os.path.join(checkpoint, "weights.pt"), weights_only=True)
    assert set(weights) == {"gen_bass_to_drums", "gen_drums_to_bass", "critic_bass",
                            "critic_drums"}
    state = torch.load(os.path.join(checkpoint, "state.pt"), weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 2
    # Each worker saved its own image pools (3 fakes each after 3 steps).
    for rank in (0, 1):
        worker = torch.load(os.path.join(checkpoint, f"worker_{rank}.pt"), weights_only=True)
        assert worker["pools"]["drums"]["images"].shape == (3, 1, 64, 64)

    # Training changed the weights (all networks start from the seeded init) ...
    torch.manual_seed(TrainConfig().seed)
    initial = build_networks(config)
    for name, net in initial.items():
        changed = any(not torch.equal(p, weights[name][k]) for k, p in net.state_dict().items())
        assert changed, name
    # ... and both workers, which saw different windows, hold identical parameters.
    metrics = read_metrics(first_run)
    reports = [m for m in metrics if m.get("event") == "checkpoint"]
    assert reports and all(r["replicas_in_sync"] for r in reports)
    steps = [m["step"] for m in metrics if "event" not in m]
    assert steps == [1, 2, 3]
    assert all(m["lr"] == pytest.approx(2e-4) for m in metrics if "event" not in m)
    # Each step carries the wall-clock time it ended, after the run's start and in order.
    start = next(m["time"] for m in metrics if m.get("event") == "start")
    ends = [m["time"] for m in metrics if "event" not in m]
    assert start <= ends[0] and ends == sorted(ends)


@pytest.mark.timeout(60)
def test_rerun_without_resume_and_conflicting_resume_are_refused(first_run, windows, capsys):
    assert cli(windows, first_run, *SMALL, "--max-steps", 6) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(windows, first_run, "--resume", "--ngf", 16) == 2
    assert "ngf" in capsys.readouterr().err
    assert cli(windows, first_run + "-missing", "--resume") == 2


@pytest.mark.timeout(300)
def test_resume_continues_step_counter_lr_and_optimizer(first_run, windows):
    rc = cli(windows, first_run, "--resume", "--num-workers", 2, "--log-every", 1)
    assert rc == 0
    latest = resolve_checkpoint(first_run)
    assert os.path.basename(latest) == "checkpoint_000000006"
    assert read_progress(latest)["step"] == 6
    # Adam's own step count went on from 3: the optimizer state was restored.
    state = read_state(latest)
    assert all(s["step"] == 6 for s in state["optimizers"]["gen"]["state"].values())
    assert state["schedulers"]["gen"]["last_epoch"] == 6

    metrics = read_metrics(first_run)
    starts = [m for m in metrics if m.get("event") == "start"]
    assert [(s["step"], s["resumed"]) for s in starts] == [(0, False), (3, True)]
    # --precision auto reached the workers: bf16 where this CPU multiplies it natively.
    assert [s["bf16"] for s in starts] == [uses_bf16("auto", "cpu")] * 2
    after = [m for m in metrics[metrics.index(starts[1]):] if "event" not in m]
    assert [m["step"] for m in after] == [4, 5, 6]
    # The lr schedule of the whole 6-step run: constant for 3 steps, then linear decay.
    cfg = TrainConfig()
    assert [m["lr"] for m in after] == pytest.approx(
        [2e-4 * cfg.lr_factor(s - 1, 6) for s in (4, 5, 6)])
    assert after[0]["lr"] == pytest.approx(2e-4) and after[-1]["lr"] < after[1]["lr"] < 2e-4
    # Step 6 ends epoch 0: a spectrogram preview was drawn.
    assert any(name.endswith(".png") for name in os.listdir(os.path.join(first_run, "logs")))


@pytest.mark.timeout(300)
def test_init_from_into_a_new_run_on_s3(first_run, ray_local, s3_endpoint, s3_bucket):
    from train.trainer import train

    source = os.path.join(first_run, "train", "checkpoint_000000003")
    data = f"s3://{s3_bucket}/windows"  # the same windows, read from S3 this time
    write_synth_windows(data, tracks=3, seconds=8.0, params=PARAMS, s3_endpoint_url=s3_endpoint)
    run_dir = f"s3://{s3_bucket}/runs/finetune"
    # lr 0: the weights after training must be exactly the source's.
    summary = train(data, run_dir, {"init_from": source, "lr": 0.0, "max_steps": 2,
                                       "checkpoint_every": 1, "keep_checkpoints": 1},
                    num_workers=2, s3_endpoint_url=s3_endpoint)
    assert summary.step == 2
    assert summary.checkpoint == f"s3://{s3_bucket}/runs/finetune/train/checkpoint_000000002"
    assert len(list_checkpoints(run_dir, s3_endpoint)) == 1  # keep_checkpoints pruned step 1
    tuned = read_weights(summary.checkpoint, s3_endpoint)
    original = read_weights(source)
    for name in original:
        for key, value in original[name].items():
            assert torch.equal(tuned[name][key], value), (name, key)
    generator, params, config = load_generator(run_dir, s3_endpoint_url=s3_endpoint)
    assert params == PARAMS and config["init_from"] == source and config["ngf"] == 8
    metrics = read_metrics(run_dir, s3_endpoint)
    assert [m["step"] for m in metrics if "event" not in m] == [1, 2]


def crash_hook(crash_rank: int, crash_step: int):
    """Fault injection for train(on_step=...): a worker dies hard (no exception, no cleanup),
    as a lost node would.  A closure, so Ray ships it by value to workers that cannot import
    this test module."""

    def on_step(rank: int, step: int, resumed: bool) -> None:
        if rank == crash_rank and step == crash_step and not resumed:
            # Ray Train's controller collects reports on its health-check poll (2 s); wait past
            # it so the last checkpoint is registered, as it would be for a crash much later.
            time.sleep(5.0)
            os._exit(1)

    return on_step


@pytest.mark.timeout(300)
def test_killed_worker_is_recovered_from_last_checkpoint(windows, ray_local, tmp_path):
    """Pix2Pix this time: rank 1 dies hard at step 3; Ray Train restarts from step 2."""
    from train.trainer import train

    run_dir = str(tmp_path / "crash")
    summary = train(windows, run_dir, {"model": "pix2pix", "ngf": 8, "ndf": 8, "unet_downs": 6,
                                       "max_steps": 4, "checkpoint_every": 2, "log_every": 1},
                    num_workers=2, max_failures=1, on_step=crash_hook(crash_rank=1, crash_step=3))
    assert summary.step == 4
    metrics = read_metrics(run_dir)
    starts = [(m["step"], m["resumed"]) for m in metrics if m.get("event") == "start"]
    assert starts == [(0, False), (2, True)]
    reports = [m for m in metrics if m.get("event") == "checkpoint"]
    assert [r["step"] for r in reports] == [2, 4] and all(r["replicas_in_sync"] for r in reports)
    weights = read_weights(summary.checkpoint)
    assert set(weights) == {"gen_bass_to_drums", "critic_drums"}
    saved = json.loads(Path(summary.checkpoint, "config.json").read_text())
    assert not {"crash_at_step", "crash_rank", "on_step"} & set(saved)  # user options only
    generator, _, config = load_generator(run_dir)
    assert config["model"] == "pix2pix" and config["norm"] == "batch"
    assert generator(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shuffle", ["local", "full"])
def test_cyclegan_streams_are_unpaired(windows, ray_local, shuffle):
    """Bass and drums are shuffled independently: the original pairs are broken up.

    local (the default): random block order plus a per-worker buffer, read the way a worker
    reads its shard; full: a global shuffle per stream."""
    import pyarrow.parquet as pq

    from train.batches import iter_arrow
    from train.trainer import build_datasets

    cfg = TrainConfig(shuffle=shuffle, shuffle_buffer=64).resolved()
    assert TrainConfig().shuffle == "local"
    datasets = build_datasets(windows, cfg)
    assert set(datasets) == {"bass", "drums"}

    def stream(column: str, seed: tuple) -> list[bytes]:
        return [v.as_py() for batch in iter_arrow(datasets[column], cfg, seed)
                for v in batch.column(column)]

    bass, drums = stream("bass", (0, 0, 0, 1)), stream("drums", (0, 0, 0, 2))
    table = pq.read_table(windows)
    train_rows = [i for i, s in enumerate(table.column("split").to_pylist()) if s == "train"]
    original = {(table.column("bass")[i].as_py(), table.column("drums")[i].as_py())
                for i in train_rows}
    assert sorted(bass) == sorted(table.column("bass")[i].as_py() for i in train_rows)
    assert len(bass) == len(drums) == 2 * STEPS_PER_EPOCH
    # Independent shuffles keep about one original pair on average.
    assert sum((b, d) in original for b, d in zip(bass, drums)) <= len(bass) // 2
