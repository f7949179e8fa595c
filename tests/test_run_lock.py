"""One training run at a time per run folder: RUN_DIR/run.lock (issue #31, item 6)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pipelines.mel import MelParams
from train.run_lock import LOCK_NAME, RunLocked, acquire, release, run_lock

PARAMS = MelParams(n_mels=64, window_frames=64, overlap_frames=16)
SMALL = ["--ngf", "8", "--ndf", "8", "--n-blocks", "2"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _other_live_process() -> dict:
    """The lock record of a run that is still going (this test's parent process)."""
    return {"host": socket.gethostname(), "pid": os.getppid(), "started": "2026-01-02T03:04:05+00:00",
            "token": "theirs"}


@pytest.mark.timeout(60)
def test_second_holder_is_refused_with_the_holder_and_how_to_break_it(tmp_path):
    run_dir = str(tmp_path / "run")
    mine = acquire(run_dir)
    record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
    with pytest.raises(RunLocked) as info:
        acquire(run_dir)
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message and record["started"] in message
    assert f"delete {run_dir}/{LOCK_NAME}" in message and "\n" not in message
    release(run_dir, mine)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with run_lock(run_dir):  # free again
        pass
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temp file left behind


@pytest.mark.timeout(60)
def test_released_when_the_block_fails_and_stale_locks(tmp_path):
    run_dir = str(tmp_path / "run")
    with pytest.raises(ZeroDivisionError):
        with run_lock(run_dir):
            1 / 0
    assert not (tmp_path / "run" / LOCK_NAME).exists()

    lock = tmp_path / "run" / LOCK_NAME
    # a run killed on this host (its pid is gone): broken automatically
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "x", "token": "t"}))
    with run_lock(run_dir) as mine:
        assert json.loads(lock.read_text())["token"] == mine["token"]
    # a live process on this host, or any process on another host: refused
    for holder in (_other_live_process(), {"host": "elsewhere.invalid", "pid": _dead_pid(), "started": "x"}):
        lock.write_text(json.dumps(holder))
        with pytest.raises(RunLocked, match=f"pid {holder['pid']} on host {holder['host']}"):
            acquire(run_dir)
        assert json.loads(lock.read_text()) == holder  # left alone
    lock.write_text("")  # unreadable: refused too
    with pytest.raises(RunLocked, match="unknown run"):
        acquire(run_dir)


@pytest.mark.timeout(120)
def test_s3_lock(s3_bucket, s3_endpoint):
    import boto3

    run_dir = f"s3://{s3_bucket}/runs/a"
    mine = acquire(run_dir, s3_endpoint)
    with pytest.raises(RunLocked, match=f"delete {run_dir}/{LOCK_NAME}"):
        acquire(run_dir, s3_endpoint)
    with pytest.raises(RunLocked):
        acquire(run_dir + "/", s3_endpoint)
    acquire(f"s3://{s3_bucket}/runs/b", s3_endpoint)  # another run folder is another lock
    release(run_dir, mine, s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == [f"runs/b/{LOCK_NAME}"]
    client.put_object(Bucket=s3_bucket, Key=f"runs/a/{LOCK_NAME}", Body=json.dumps(_other_live_process()))
    with pytest.raises(RunLocked, match="started 2026-01-02"):
        acquire(run_dir, s3_endpoint)


@pytest.mark.timeout(600)
def test_train_refuses_a_locked_run_folder_and_releases_its_own(ray_local, tmp_path, capsys):
    from cycledrums_cli import main
    from train.runlog import read_metrics
    from train.synth_windows import write_synth_windows

    data = str(tmp_path / "data")
    write_synth_windows(data, tracks=2, seconds=4.0, params=PARAMS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps(_other_live_process()))
    assert main(["train", data, str(run_dir), *SMALL, "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "in use by the run of pid" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing written

    (run_dir / LOCK_NAME).unlink()  # the other run ended
    assert main(["train", data, str(run_dir), *SMALL, "--max-steps", "1", "--log-every", "1"]) == 0
    assert not (run_dir / LOCK_NAME).exists()  # released at the end
    assert [m for m in read_metrics(str(run_dir)) if m.get("event") == "start"]
