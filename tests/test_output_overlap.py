"""No job writes into its own input: OUTPUT equal to, inside or containing an input is refused
with a one-line user error (exit 2) before Ray starts (issue #31, item 4)."""
from __future__ import annotations

import pytest

from cycledrums_cli import main
from pipelines.paths import OutputOverlapsInput, check_output_outside_inputs, overlap


@pytest.mark.parametrize("a, b, expected", [
    ("/a/b", "/a/b", "equal"),
    ("/a/b/", "/a/b", "equal"),
    ("/a/./b", "/a/b", "equal"),
    ("/a/b/c", "/a/b", "inside"),
    ("/a/b", "/a/b/c/d", "contains"),
    ("/a/b", "/a/bc", None),            # siblings with a common prefix
    ("/a/bc", "/a/b", None),
    ("/a/b", "/a/c", None),
    ("/", "/a", "contains"),
    ("s3://bucket/runs", "s3://bucket/runs", "equal"),
    ("s3://bucket/runs/", "s3://bucket/runs", "equal"),
    ("s3://bucket/runs/out", "s3://bucket/runs", "inside"),
    ("s3://bucket", "s3://bucket/data", "contains"),
    ("s3://bucket/data", "s3://bucket/data2", None),
    ("s3://bucket/data", "s3://bucket2/data", None),
    ("s3://a/b", "/a/b", None),           # a local path and an S3 prefix never overlap
    ("file:///a/b/c", "/a/b", "inside"),
])
def test_overlap(a, b, expected):
    assert overlap(a, b) == expected


def test_check_resolves_relative_paths_and_links(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for output in ("data", "./data/out", str(tmp_path / "link" / "out"), str(tmp_path)):
        with pytest.raises(OutputOverlapsInput) as info:
            check_output_outside_inputs(output, {"INPUT": str(data)})
        assert "\n" not in str(info.value) and "INPUT" in str(info.value)
    check_output_outside_inputs("data2", {"INPUT": str(data), "OTHER": None, "MORE": []})
    check_output_outside_inputs("s3://b/data", {"INPUT": str(data)})
    with pytest.raises(OutputOverlapsInput, match="is inside CHECKPOINT"):
        check_output_outside_inputs("s3://b/run/out", {"INPUT": ["s3://b/x"], "CHECKPOINT": "s3://b/run/"})


@pytest.fixture
def no_ray(monkeypatch):
    """Any job that got as far as starting Ray fails the test."""
    import cluster.ray_runtime

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster.ray_runtime, "init_ray", refuse)


def _refused(argv, capsys, relation="") -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "own input" in err and relation in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.timeout(120)
def test_every_job_refuses_an_output_on_its_input(tmp_path, capsys, no_ray):
    data, run, ckpt, test = (tmp_path / n for n in ("data", "run", "ckpt", "test"))
    for d in (data, run, ckpt, test):
        d.mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    _refused(["prepare", str(data), str(data)], capsys, "is INPUT")
    _refused(["prepare", str(data), str(data / "windows")], capsys, "is inside INPUT")
    _refused(["prepare", str(data / "songs"), str(data)], capsys, "contains INPUT")
    _refused(["train", str(data), str(data)], capsys, "RUN_DIR")
    _refused(["train", str(data), str(data / "run")], capsys, "is inside DATA")
    _refused(["generate", str(ckpt), str(test), str(test)], capsys, "is INPUT")
    _refused(["generate", str(run), str(test), str(run / "out")], capsys, "is inside CHECKPOINT")
    _refused(["evaluate", str(run), str(test), str(test)], capsys, "is TEST_SET")
    _refused(["evaluate", str(run), str(test), str(tmp_path)], capsys, "contains")
    _refused(["evaluate", str(ckpt), str(test), str(run / "eval"), "--also", f"p={run}/"], capsys,
             "is inside CHECKPOINT")
    _refused(["score", str(run), str(test), str(test / "scores")], capsys, "is inside REFERENCE")
    _refused(["score", f"cg={run}", str(test), str(run)], capsys, "is GENERATED")
    _refused(["score", str(ckpt), str(test), str(data / "s"), "--also", f"x={data}"], capsys,
             "is inside GENERATED")
    _refused(["grooves", str(data), str(data / "out")], capsys, "is inside GROOVE_DIR")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.timeout(120)
def test_s3_output_on_an_s3_input_is_refused(s3_bucket, s3_endpoint, capsys, no_ray):
    root = f"s3://{s3_bucket}"
    endpoint = ["--s3-endpoint-url", s3_endpoint]
    _refused(["prepare", f"{root}/songs", f"{root}/songs/windows", *endpoint], capsys, "is inside INPUT")
    _refused(["train", f"{root}/windows", f"{root}/windows/", *endpoint], capsys, "is DATA")
    _refused(["evaluate", f"{root}/run", f"{root}/test", root, *endpoint], capsys, "contains")
    # siblings with a common prefix are not an overlap: the job goes on to its next check
    assert main(["train", f"{root}/windows", f"{root}/windows2", *endpoint]) == 2
    assert "own input" not in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_score_and_evaluate_option_files_count_as_inputs(tmp_path, capsys, no_ray):
    gen, ref, run, out = (tmp_path / n for n in ("gen", "ref", "run", "out"))
    for d in (gen, ref, run, out):
        d.mkdir()
    grader = out / "grader.json"  # a grader saved by an earlier run into the same OUTPUT
    grader.write_text("{}")
    _refused(["score", str(gen), str(ref), str(out), "--grader", str(grader)], capsys, "contains --grader")
    _refused(["evaluate", str(run), str(ref), str(out), "--grader", str(grader)], capsys, "contains --grader")
    _refused(["score", str(gen), str(ref), str(out / "s"), "--annotations", str(out / "s" / "a.csv")], capsys,
             "contains --annotations")
    assert grader.read_text() == "{}"
