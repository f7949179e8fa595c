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
