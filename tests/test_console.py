"""The console: Ray's internal chatter filtered, progress lines with done/total and an ETA."""
from __future__ import annotations

import logging
import re

import pytest

from cluster.console import Progress, filter_batch, format_duration, is_noise


def batch(lines, actor_name=""):
    return {"ip": "127.0.0.1", "pid": 7, "is_err": False, "actor_name": actor_name,
            "task_name": "", "lines": list(lines)}


def test_ray_internal_lines_are_dropped_and_ours_kept():
    ours = "step 10/40 epoch 0 loss_g 1.234 lr 0.0002 0.50 samples/s ETA 1m00s"
    kept = filter_batch(batch([
        "Requesting resources: {'CPU': 1.0} * 2",
        "Attempting to start training worker group of size 2 with the following resources: x",
        "Wrapping provided model in DistributedDataParallel.",
        "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/x)",
        ours,
        "WARNING: 8 PYTHON worker processes have been started on node: abc with address: x",
    ], actor_name="RayTrainWorker"))
    assert kept["lines"] == [ours]
    assert filter_batch(batch(["Traceback (most recent call last):", "  File x"],
                              actor_name="PlacementGroupCleaner")) is None
    assert filter_batch(batch(["Setting up process group for: env:// [rank=0, world_size=2]"])) is None
    # The GCS tearing down an actor whose process had already gone (seen after a training run).
    assert is_noise("[2026-12-01 13:31:09,704 E 23633 23633] (gcs_server) gcs_actor_scheduler.cc:538: Failed to "
                    "kill actor b1978c56, return status: Invalid: KillActor RPC failed for actor b1978c56: "
                    "RpcError: RPC error: Socket closed rpc_code: 14")
    # A real error from a worker still reaches the user.
    assert not is_noise("ValueError: checkpoint weights do not fit this architecture")


def test_the_controllers_resource_request_timeout_is_one_line_not_a_traceback():
    """#31 item 10: Ray Train's controller under load logs "Failed to send resource request" with
    a GetTimeoutError traceback: the user sees one line saying what it means and what to try."""
    warning = ("[2026-12-04 12:00:00,000 W 9 9] autoscaling_coordinator_client.py:71 -- Failed to send "
               "resource request for train-abc. If this only happens transiently during network "
               "partition or CPU being overloaded, it's safe to ignore this error.")
    kept = filter_batch(batch([
        "before",
        warning,
        "Traceback (most recent call last):",
        '  File "/ray/autoscaling_coordinator_client.py", line 58, in send_resource_request',
        "    ray.get(",
        "",
        "During handling of the above exception, another exception occurred:",
        "Traceback (most recent call last):",
        '  File "/ray/_private/worker.py", line 2900, in get',
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
        "after",
        warning.replace("send", "cancel"),  # without a traceback: the next line stays
        "last",
    ], actor_name="TrainController"))
    lines = kept["lines"]
    assert lines[0] == "before" and lines[2] == "after" and lines[4] == "last", lines
    assert "autoscaling coordinator did not answer within 5 s" in lines[1] and "less busy" in lines[1]
    assert lines[3] == lines[1] and len(lines) == 5, lines
    assert not any("Traceback" in line or "GetTimeoutError" in line for line in lines)


def test_progress_line_has_done_total_rate_and_eta(caplog):
    progress = Progress("generate", total=4, every_s=0.0, unit="clips")
    with caplog.at_level(logging.INFO, logger="cluster.console"):
        progress.update(1)
        progress.update(1, errors=1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("generate: 1/4 clips done") and "ETA" in lines[0]
    assert "2/4" in lines[1] and "1 errors" in lines[1] and "/s" in lines[1]


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (0, 9.6, 65, 3725)] == ["0s", "10s", "1m05s", "1h02m"]


def _run(args: list[str], timeout: float) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("cycledrums")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


RAY_INTERNAL = ("PlacementGroupCleaner", "PYTHON worker processes have been started",
                "Token authentication is enabled", "Wrapping provided model", "Requesting resources",
                "logging_progress", "Failed to query Ray Train Controller", "max_restarts > 0",
                "RayDeprecationWarning", "SplitCoordinator", "Execution plan of Dataset")


def _check_readable(output: str) -> list[str]:
    import collections
    import re

    lines = [re.sub(r"^\S+ \S+ (INFO|WARNING) ", "", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    noisy = [line for line in lines if any(n in line for n in RAY_INTERNAL)]
    assert not noisy, "\n".join(noisy[:10])
    repeated = [(n, line) for line, n in collections.Counter(lines).items() if n > 3]
    assert not repeated, repeated
    return lines


@pytest.mark.timeout(900)
def test_a_small_job_prints_a_readable_console(synth_data, tmp_path):
    """prepare, train and generate, as a user runs them: no Ray-internal chatter, no line repeated
    more than a few times, progress lines with done/total and an ETA."""
    windows = tmp_path / "windows"
    lines = _check_readable(_run(["prepare", str(synth_data), str(windows)], timeout=400))
    assert any("prepare: 6/6 tracks done" in line and "ETA" in line for line in lines), lines
    lines = _check_readable(_run(["train", str(windows), str(tmp_path / "run"), "--ngf", "4", "--ndf", "4",
                                  "--n-blocks", "1", "--max-steps", "3", "--log-every", "1",
                                  "--checkpoint-every", "3", "--num-workers", "2"], timeout=480))
    steps = [line for line in lines if re.search(r"\bstep \d+/3 ", line)]
    assert steps and all("ETA" in line for line in steps), lines
    assert len(lines) < 60, "\n".join(lines)
    # A Ray Data actor pool: the driver's core worker writes its actor-restart note straight to
    # fd 2, which the command filters (cluster.console.filter_native_stderr).
    lines = _check_readable(_run(["generate", str(tmp_path / "run"), str(synth_data / "test"),
                                  str(tmp_path / "generated"), "--griffin-lim-iters", "2"], timeout=400))
    assert any(re.search(r"generate: 2/2 done.*ETA", line) for line in lines), lines


def test_the_stderr_filter_drops_ray_noise_and_passes_everything_else():
    import io

    from cluster.console import forward_filtered

    noise = ("[2026-12-01 14:02:45,182 E 713 713] core_worker.cc:2465: Actor with class name: "
             "'MapWorker(MapBatches(ClipActor))' and ID: '67' has constructor arguments in the object store "
             "and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
             "actor restart will fail.\n")
    ours = ["2026-12-01 14:02:50,001 INFO infer.generate: generate: 2/2 done\n",
            "Traceback (most recent call last):\n", "ValueError: bad input \xe9\n", "no newline at the end"]
    sink = io.BytesIO()
    forward_filtered(io.BytesIO((ours[0] + noise + "".join(ours[1:])).encode()), sink)
    assert sink.getvalue().decode() == "".join(ours)
