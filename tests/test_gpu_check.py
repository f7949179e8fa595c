"""benchmarks/gpu_check.py must not rot: its dry run (tiny sizes, CPU) runs every GPU path."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.timeout(300)
def test_gpu_check_dry_run_runs_every_path(capsys):
    import gpu_check

    report = gpu_check.main(["--dry-run", "--json"])
    assert set(report) >= {"train", "generate", "score", "demucs", "total_seconds"}
    assert report["train"]["samples_per_s_fp32"] > 0
    assert set(report["train"]) >= {"instance_norm_keeps_channels_last", "reflection_pad_keeps_channels_last"}
    assert report["generate"]["inversion"] == "generator actor (cpu)" and report["generate"]["invert_s_per_clip"] > 0
    assert report["score"]["clips_per_s"] > 0 and report["demucs"]["realtime_factor"] > 0
