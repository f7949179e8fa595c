"""The results-commit protocol (infer/results.py): a killed evaluate / score / generate leaves either
the previous complete set or a folder marked incomplete (issue #31, item 7)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infer.results import (EVALUATE_RESULTS, INCOMPLETE, PREVIOUS, ResultsIncomplete, ResultSet, check_complete,
                           generate_results)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


OLD = {"summary.json": b"old summary", "clips.parquet": b"old clips", "report.html": b"old report",
       "media/c1/set0.ogg": b"old media", "audio/cyclegan/c1/drums.wav": b"old drums"}
NEW = {"clips.parquet": b"new clips", "audio/cyclegan/c2/drums.wav": b"new drums"}


@pytest.mark.timeout(60)
def test_begin_moves_the_previous_set_aside_and_commit_clears_the_marks(tmp_path):
    out = tmp_path / "out"
    _write(out, {**OLD, "notes.txt": b"the user's"})
    results = ResultSet(str(out), EVALUATE_RESULTS, "evaluate")
    results.begin()
    marker = json.loads((out / INCOMPLETE).read_text())
    assert marker["job"] == "evaluate" and marker["phase"] == "writing" and marker["pid"]
    assert _tree(out / PREVIOUS) == OLD  # the last complete set, whole
    with pytest.raises(ResultsIncomplete, match="marked incomplete"):
        check_complete(str(out), "GENERATED")
    _write(out, {**NEW, "summary.json": b"new summary"})
    results.commit()
    assert _tree(out) == {**NEW, "summary.json": b"new summary", "notes.txt": b"the user's"}
    check_complete(str(out), "GENERATED")


@pytest.mark.timeout(60)
def test_a_killed_run_is_cleaned_up_by_the_next_one(tmp_path):
    out = tmp_path / "out"
    _write(out, OLD)
    ResultSet(str(out), EVALUATE_RESULTS, "evaluate").begin()
    _write(out, NEW)  # ... and the job is killed: no commit
    assert (out / INCOMPLETE).exists() and not (out / "summary.json").exists()

    again = ResultSet(str(out), EVALUATE_RESULTS, "evaluate")
    again.begin()  # the killed run's partial files go; the last complete set stays aside
    assert _tree(out / PREVIOUS) == OLD
    assert set(_tree(out)) == {INCOMPLETE} | {f"{PREVIOUS}/{n}" for n in OLD}
    _write(out, {"summary.json": b"third"})
    again.commit()
    assert _tree(out) == {"summary.json": b"third"}


@pytest.mark.timeout(60)
def test_a_run_killed_while_moving_the_previous_set_aside(tmp_path):
    out = tmp_path / "out"
    _write(out, OLD)
    names = list(EVALUATE_RESULTS)
    (out / PREVIOUS).mkdir()
    (out / "summary.json").rename(out / PREVIOUS / "summary.json")  # moved, then killed
    (out / INCOMPLETE).write_text(json.dumps({"job": "evaluate", "phase": "moving", "names": names}))
    ResultSet(str(out), EVALUATE_RESULTS, "evaluate").begin()
    assert _tree(out / PREVIOUS) == OLD  # the rest was moved, nothing deleted


@pytest.mark.timeout(120)
def test_s3_result_set(s3_bucket, s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)

    def keys():
        return {o["Key"]: client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
                for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])}

    for name, data in OLD.items():
        client.put_object(Bucket=s3_bucket, Key=f"out/{name}", Body=data)
    out = f"s3://{s3_bucket}/out"
    results = ResultSet(out + "/", EVALUATE_RESULTS, "evaluate", s3_endpoint)
    results.begin()
    assert {k: v for k, v in keys().items() if k.startswith(f"out/{PREVIOUS}/")} == \
        {f"out/{PREVIOUS}/{n}": d for n, d in OLD.items()}
    with pytest.raises(ResultsIncomplete):
        check_complete(out, "GENERATED", s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="out/summary.json", Body=b"new")
    results.commit()
    assert keys() == {"out/summary.json": b"new"}


@pytest.mark.timeout(60)
def test_generate_results_cover_the_clip_folders_of_both_runs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "gen"
    _write(out, {"old_song/drums.wav": b"1", "track/w0001/drums.wav": b"2", "summary.json": b"{}",
                 "unrelated/x": b"3"})
    pq.write_table(pa.table({"clip_id": ["old_song", "track/w0001"]}), out / "manifest.parquet")
    results = generate_results(str(out), ["new_song"])
    assert {"old_song", "track", "new_song", "manifest.parquet", "summary.json"} <= set(results.names)
    results.begin()
    assert sorted(p.name for p in out.iterdir()) == sorted([INCOMPLETE, PREVIOUS, "unrelated"])


KILLER = """
import os, signal, sys
import infer.clips_table
original = infer.clips_table.write_clips_table

def write_then_die(*args, **kwargs):
    uris = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 while the results are being written
    return uris

infer.clips_table.write_clips_table = write_then_die
from cycledrums_cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(900)
def test_evaluate_killed_while_writing_leaves_the_old_set_aside_and_the_folder_marked(ray_local, tmp_path):
    from cycledrums_cli import main
    from infer.inception import save_random_weights
    from pipelines.synth import write_dataset
    from tests.test_generate import write_tiny_checkpoint

    write_dataset(tmp_path / "synth", tracks=6, seconds=7.0, seed=3)
    test_set = str(tmp_path / "synth" / "test")
    model = str(write_tiny_checkpoint(tmp_path / "ckpt"))
    weights = str(save_random_weights(str(tmp_path / "inception.pth"), seed=0))
    out = tmp_path / "eval"
    args = ["evaluate", model, test_set, str(out), "--inception-weights", weights, "--griffin-lim-iters", "2",
            "--report-clips", "1", "--no-baselines"]
    assert main(args) == 0
    first = _tree(out)
    assert "summary.json" in first and "report.html" in first and INCOMPLETE not in first

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    address = ray_local.get_runtime_context().gcs_address
    killed = subprocess.run([sys.executable, str(script), *args, "--address", address], cwd=Path.cwd(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert killed.returncode == -9, killed.stderr.decode()[-3000:]
    assert (out / "clips.parquet").exists()  # the killed run's new table ...
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()  # ... not beside the old
    assert json.loads((out / INCOMPLETE).read_text())["job"] == "evaluate"
    assert _tree(out / PREVIOUS) == first  # the last complete set, whole
    with pytest.raises(ResultsIncomplete):
        check_complete(str(out), "OUTPUT")

    assert main(args) == 0  # the next run cleans up and commits
    after = _tree(out)
    assert INCOMPLETE not in after and not any(k.startswith(PREVIOUS) for k in after)
    assert set(after) == set(first)


@pytest.mark.timeout(120)
def test_score_refuses_a_generated_set_marked_incomplete(tmp_path, capsys, monkeypatch):
    import cluster.ray_runtime
    from cycledrums_cli import main

    monkeypatch.setattr(cluster.ray_runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    generated = tmp_path / "gen"
    _write(generated, {"c1/drums.wav": b"x", INCOMPLETE: b"{}"})
    assert main(["score", str(generated), str(tmp_path / "ref"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "marked incomplete" in err and "Traceback" not in err


@pytest.mark.timeout(600)
def test_generate_into_the_same_output_replaces_the_whole_previous_set(ray_local, tmp_path):
    import numpy as np
    import soundfile as sf

    from cycledrums_cli import main
    from tests.test_generate import write_tiny_checkpoint

    model = str(write_tiny_checkpoint(tmp_path / "ckpt"))
    rate = 22050
    t = np.arange(int(rate * 7.0)) / rate
    for name, freq in (("first", 55.0), ("second", 82.4)):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / f"{name}.wav", (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    out = tmp_path / "gen"
    args = ["--griffin-lim-iters", "2", "--generator-batch", "4"]
    assert main(["generate", model, str(tmp_path / "first"), str(out), *args]) == 0
    assert (out / "first" / "drums.wav").exists() and not (out / INCOMPLETE).exists()
    assert main(["generate", model, str(tmp_path / "second"), str(out), *args]) == 0
    # the first run's clip folder went aside with its manifest, then away at the commit
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["second", "manifest.parquet", "manifest.csv", "errors.parquet", "errors.csv", "summary.json"])
