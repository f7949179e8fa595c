"""The console: Ray's internal chatter filtered, progress lines with done/total and an ETA."""
from __future__ import annotations

import logging

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
    # A real error from a worker still reaches the user.
    assert not is_noise("ValueError: checkpoint weights do not fit this architecture")


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
