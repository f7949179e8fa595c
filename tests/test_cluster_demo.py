"""`cycledrums demo`: the whole pipeline (slow, --quick) and its option / failure handling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cycledrums_demo import DemoError, DemoOptions, StepLog, _prepare_out, measure_step_seconds
from cycledrums_cli import build_parser, main

VENV_BIN = Path(sys.executable).parent


def _options(*argv: str) -> DemoOptions:
    return DemoOptions.from_args(build_parser().parse_args(["demo", *argv]))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_demo_runs_every_step_and_lists_its_results(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([str(VENV_BIN / "cycledrums"), "demo", str(out), "--quick"], env=env,
                            capture_output=True, text=True, timeout=850)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert list(summary["step_seconds"]) == ["synth", "prepare", "train", "evaluate"]
    assert summary["train_steps"] == 4
    results = summary["results"]
    test_songs = sorted(p.name for p in (out / "data" / "test").iterdir() if p.is_dir())
    assert len(test_songs) == 2
    assert sorted(Path(p).parent.name for p in results["audio"] if p.endswith("mix.wav")) == test_songs
    assert any("/scores/" in p for p in results["plots"])  # score's figures
    assert {Path(p).name for p in results["tables"]} >= {"clips.csv", "summary.json", "_summary.json"}
    assert all("/scores/audio/cyclegan/" in p for p in results["audio"])  # evaluate's audio, every test song
    assert [Path(p).name for p in results["report"]] == ["report.html"]  # score's listening report
    for path in results["audio"] + results["plots"] + results["tables"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 0
        assert path in result.stdout  # the summary printed at the end names every file
    assert summary["scores"]["cyclegan"]["clips_scored"] == 2
    assert "demo finished in" in result.stdout


def test_quick_and_explicit_options():
    quick = _options("out", "--quick")
    assert (quick.tracks, quick.max_steps, quick.train_minutes, quick.num_workers) == (6, 4, None, 1)
    assert (quick.ngf, quick.n_blocks) == (8, 2)
    full = _options("out")
    assert (full.tracks, full.seconds, full.train_minutes, full.max_steps) == (12, 30.0, 5.0, None)
    assert full.num_workers == 2
    assert _options("out", "--quick", "--max-steps", "9").max_steps == 9
    budget = _options("out", "--quick", "--train-minutes", "1.5")
    assert (budget.train_minutes, budget.max_steps) == (1.5, None)
    with pytest.raises(SystemExit):  # argparse: the two run lengths exclude each other
        build_parser().parse_args(["demo", "--max-steps", "3", "--train-minutes", "1"])


def test_bad_options_and_an_earlier_demo_are_clear_errors(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "a"), "--tracks", "1"]) == 2
    assert "--tracks must be at least 2" in capsys.readouterr().err
    out = tmp_path / "b"
    (out / "windows").mkdir(parents=True)
    assert main(["demo", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds demo outputs (windows)" in err and "--force" in err


def test_force_clears_only_what_the_demo_writes(tmp_path):
    out = tmp_path / "demo"
    (out / "run" / "checkpoint").mkdir(parents=True)
    (out / "demo_summary.json").write_text("{}")
    (out / "my-notes.txt").write_text("keep me")
    _prepare_out(DemoOptions(out=out, force=True))
    assert sorted(p.name for p in out.iterdir()) == ["my-notes.txt"]


def test_a_failing_step_is_named_with_its_command(tmp_path, capsys):
    failed = r"step 'synth' failed with exit status 2.*\n  command: cycledrums synth$"
    with pytest.raises(DemoError, match=failed):
        StepLog().run("synth", ["synth"])  # no OUT: argparse refuses
    with pytest.raises(DemoError, match=r"step 'prepare' failed with exit status 2") as err:
        StepLog().run("prepare", ["prepare", str(tmp_path / "missing"), str(tmp_path / "w")])
    assert "input not found" in capsys.readouterr().err  # the step's own error, printed above
    assert f"command: cycledrums prepare {tmp_path / 'missing'}" in str(err.value)


def test_step_time_is_measured_from_the_training_log(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [{"event": "start", "step": 0, "time": 100.0}, {"step": 5, "loss_g": 1.0},
             {"event": "checkpoint", "step": 10, "time": 119.0},
             {"event": "end", "step": 10, "time": 120.0}]
    (logs / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    per_step, overhead = measure_step_seconds(tmp_path, 10, wall=50.0)
    assert per_step == pytest.approx(2.0) and overhead == pytest.approx(30.0)
    assert measure_step_seconds(tmp_path / "nothing", 10, wall=50.0) == (5.0, 0.0)
