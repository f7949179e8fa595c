"""A training driver SIGKILLed after a checkpoint: --resume goes on from the newest complete
checkpoint on storage (not from Ray's run snapshot, which lags), and overwrites nothing."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.mel import MelParams
from train.synth_windows import write_synth_windows

PARAMS = MelParams(n_mels=64, window_frames=64, overlap_frames=16)
SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "2"]


def _complete(folder: Path) -> bool:
    return all((folder / name).exists() for name in ("weights.pt", "state.pt", "config.json"))


def _digests(run_dir: Path) -> dict[str, str]:
    """{checkpoint name: hash of its files} for every complete checkpoint on storage."""
    out = {}
    for folder in sorted((run_dir / "train").glob("checkpoint_*")):
        if _complete(folder):
            h = hashlib.sha256()
            for f in sorted(folder.iterdir()):
                h.update(f.name.encode() + f.read_bytes())
            out[folder.name] = h.hexdigest()
    return out


@pytest.mark.timeout(400)
def test_resume_after_sigkill_starts_at_newest_stored_checkpoint(ray_local, tmp_path):
    from cycledrums_cli import main
    from train.runlog import read_metrics

    data = str(tmp_path / "data")
    write_synth_windows(data, tracks=3, seconds=8.0, params=PARAMS)
    run_dir = tmp_path / "run"
    address = ray_local.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cycledrums_cli import main; sys.exit(main())",
         "train", data, str(run_dir), "--address", address, *SMALL, "--max-steps", "60",
         "--checkpoint-every", "1", "--keep-checkpoints", "100", "--log-every", "1"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    third = run_dir / "train" / "checkpoint_000000003"
    deadline = time.monotonic() + 240
    while not _complete(third):
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint 3 within 240 s"
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray Train controller die at once
    driver.wait()
    time.sleep(3)  # let Ray clean up the dead driver's workers
    before = _digests(run_dir)
    newest = max(before)
    assert newest >= third.name

    assert main(["train", data, str(run_dir), "--resume", "--stop-after-steps", "1",
                 "--log-every", "1"]) == 0
    starts = [m for m in read_metrics(str(run_dir)) if m.get("event") == "start"]
    assert starts[-1]["resumed"] and starts[-1]["step"] == int(newest.rsplit("_", 1)[1])
    after = _digests(run_dir)
    # Every checkpoint that was complete before the resume is still there, byte for byte.
    assert {k: after.get(k) for k in before} == before
    assert max(after) > newest


def _start_driver(run_dir: Path, data: str, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from cycledrums_cli import main; sys.exit(main())",
         "train", data, str(run_dir), "--address", address, *SMALL, *extra],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _logged_steps(run_dir: Path) -> list[int]:
    from train.runlog import read_metrics

    try:
        return [m["step"] for m in read_metrics(str(run_dir)) if "event" not in m]
    except ValueError:  # a line being written
        return []


def _wait(driver: subprocess.Popen, ready, what: str, seconds: float = 420) -> None:
    """Until ready(); a driver that ends first or a timeout fails the test, and the driver (its
    whole session) is killed then, so it cannot train on behind the failed test."""
    deadline = time.monotonic() + seconds
    try:
        while not ready():
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"no {what} within {seconds:g} s"
            time.sleep(0.02)
    except BaseException:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        raise


def test_a_resumed_log_drops_the_steps_past_its_checkpoint(tmp_path):
    """#31 item 11, the log's part: a run killed at step 5 after checkpoint 3 restarts at step 3;
    its log then keeps steps 1-3 (and the earlier attempt's start and checkpoint records), drops
    4, 5 and a line cut off by the kill, so the steps trained again appear once."""
    import json

    from train.runlog import RunLog, read_metrics

    run_dir = str(tmp_path / "run")
    killed = RunLog(run_dir)
    killed.write([{"event": "start", "step": 0}] + [{"step": s} for s in (1, 2, 3)]
                 + [{"event": "checkpoint", "step": 3}] + [{"step": s} for s in (4, 5)])
    killed.file.write(json.dumps({"step": 6})[:5])  # the kill cut this line off
    killed.file.flush()
    resumed = RunLog(run_dir)
    assert resumed.truncate_after(3) == 3
    resumed.write([{"event": "start", "step": 3}] + [{"step": s} for s in (4, 5)])
    resumed.close()
    records = read_metrics(run_dir)
    assert [(r.get("event"), r["step"]) for r in records] == [
        ("start", 0), (None, 1), (None, 2), (None, 3), ("checkpoint", 3), ("start", 3), (None, 4), (None, 5)]
    assert RunLog(run_dir).truncate_after(5) == 0  # nothing past: the file is left as it is


@pytest.mark.timeout(700)
def test_resume_after_sigkill_logs_each_step_once(ray_local, tmp_path):
    """#31 item 11: steps logged after the last checkpoint by a killed run are trained again on
    --resume; metrics.jsonl then holds each step once (the records past the checkpoint go)."""
    from cycledrums_cli import main

    data = str(tmp_path / "data")
    write_synth_windows(data, tracks=3, seconds=8.0, params=PARAMS)
    run_dir = tmp_path / "run"
    address = ray_local.get_runtime_context().gcs_address
    driver = _start_driver(run_dir, data, address, "--max-steps", "60", "--checkpoint-every", "3",
                           "--keep-checkpoints", "100", "--log-every", "1")
    third = run_dir / "train" / "checkpoint_000000003"
    _wait(driver, lambda: _complete(third) and max(_logged_steps(run_dir), default=0) >= 4, "step 4")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3)
    assert max(_digests(run_dir)) == third.name  # killed between checkpoints 3 and 6
    assert main(["train", data, str(run_dir), "--resume", "--stop-after-steps", "2", "--log-every", "1"]) == 0
    steps = _logged_steps(run_dir)
    assert sorted(steps) == steps and len(set(steps)) == len(steps), steps
    assert steps == list(range(1, 6)), steps


@pytest.mark.timeout(700)
def test_sigint_stops_train_with_130_and_keeps_the_checkpoints(ray_local, tmp_path):
    """#31 item 11: Ctrl-C of train exits 130 saying "interrupted", as prepare and evaluate do;
    Ray's graceful abort still runs and the run resumes from its newest complete checkpoint."""
    from train.checkpoint import usable_checkpoint

    data = str(tmp_path / "data")
    write_synth_windows(data, tracks=3, seconds=8.0, params=PARAMS)
    run_dir = tmp_path / "run"
    address = ray_local.get_runtime_context().gcs_address
    driver = _start_driver(run_dir, data, address, "--max-steps", "60", "--checkpoint-every", "2",
                           "--keep-checkpoints", "100")
    _wait(driver, lambda: _complete(run_dir / "train" / "checkpoint_000000002"), "checkpoint 2")
    driver.send_signal(signal.SIGINT)
    try:
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    err = err.decode()
    assert driver.returncode == 130, (driver.returncode, err[-3000:])
    assert "cycledrums train: interrupted" in err and "Traceback" not in err, err[-3000:]
    checkpoint, config, skipped = usable_checkpoint(str(run_dir))
    assert checkpoint.rstrip("/").rsplit("_", 1)[1] >= "000000002"
