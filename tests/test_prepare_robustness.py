"""prepare on bad input: clear errors before Ray, a non-zero exit when nothing was prepared,
truncated files refused, symlinked folders followed, nothing overwritten."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from cycledrums_cli import main


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> Path:
    """real/<split>/<track>/{bass,drums}.wav: two synth songs of 14 s (two windows each)."""
    from pipelines.synth import write_dataset

    root = tmp_path_factory.mktemp("songs")
    write_dataset(root / "real", tracks=2, seconds=14.0, seed=3)
    return root / "real"


def _tracks(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("bass.wav"))


def _no_traceback(err: str) -> bool:
    """No traceback printed by the job (Ray Data's log handler may still hold a stream an
    earlier test's capsys closed: Python reports that as '--- Logging error ---')."""
    import re

    ours = re.sub(r"--- Logging error ---.*?\nArguments: [^\n]*", "", err, flags=re.S)
    return "Traceback" not in ours


def _errors(out: Path) -> list[dict]:
    with open(out / "_errors.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_option_and_output_errors_come_before_ray(songs, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    assert main(["prepare", str(songs), str(taken)]) == 2
    assert main(["prepare", str(songs), str(tmp_path / "o"), "--num-cpus", "-1"]) == 2
    assert main(["prepare", str(songs), str(tmp_path / "o"), "--num-cpus", "0"]) == 2
    err = capsys.readouterr().err
    assert "existing file" in err and "--num-cpus" in err and _no_traceback(err)
    assert taken.read_text() == "my notes" and not (tmp_path / "o").exists()


@pytest.mark.timeout(300)
def test_symlinks_truncation_and_a_bad_track(ray_local, songs, tmp_path, capsys):
    # INPUT/train is a symlink to a split folder elsewhere; INPUT/loop/up points back up.
    data = tmp_path / "in"
    data.mkdir()
    train = songs / "train"
    os.symlink(train, data / "train")
    (data / "loop").mkdir()
    os.symlink("..", data / "loop" / "up")
    os.symlink("self", data / "self")  # a symlink to itself
    good = _tracks(train)[0]
    cut = tmp_path / "cut" / "train" / "cut"
    cut.mkdir(parents=True)
    for stem in ("bass", "drums"):
        raw = (good / f"{stem}.wav").read_bytes()
        (cut / f"{stem}.wav").write_bytes(raw[: int(len(raw) * 0.6)] if stem == "bass" else raw)
    os.symlink(cut.parent.parent / "train" / "cut", data / "cut")
    bad = data / "test" / "bad"
    bad.mkdir(parents=True)
    (bad / "bass.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    (bad / "drums.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")

    out = tmp_path / "out"
    rc = main(["prepare", str(data), str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _no_traceback(captured.err)
    summary = json.loads((out / "_summary.json").read_text())
    tracks_found = summary["tracks_in_catalog"]
    assert tracks_found == len(_tracks(train)) + 2  # symlinked split followed, loops skipped once
    rows = {r["track"]: r for r in _errors(out)}
    assert rows["test/bad"]["outcome"] == "failed"
    assert "BytesIO" not in rows["test/bad"]["reason"] and "bass.wav" in rows["test/bad"]["reason"]
    # A file cut short is refused by the decoding every job shares (issue #31), with both lengths.
    assert rows["cut"]["outcome"] == "failed" and "truncated" in rows["cut"]["reason"]
    assert "bass.wav" in rows["cut"]["reason"] and "header declares" in rows["cut"]["reason"]
    assert summary.get("tracks_with_warnings", 0) == 0
    # _summary.json also says what the data set holds after this run.
    assert sum(v["tracks"] for v in summary["dataset"].values()) == summary["tracks_ok"]

    # A second run adds nothing, but the data set is not empty: exit 0, and the summary
    # still describes the whole data set.
    assert main(["prepare", str(data), str(out)]) == 0
    again = json.loads((out / "_summary.json").read_text())
    assert again["tracks_ok"] == 0 and again["dataset"] == summary["dataset"]


@pytest.mark.timeout(300)
def test_nothing_prepared_exits_nonzero(ray_local, songs, tmp_path, capsys):
    out = tmp_path / "quiet"
    assert main(["prepare", str(songs), str(out), "--min-level-db", "100"]) == 1
    err = capsys.readouterr().err
    assert "nothing prepared" in err and "--min-level-db" in err and _no_traceback(err)

    broken = tmp_path / "broken" / "train" / "t"
    broken.mkdir(parents=True)
    for stem in ("bass", "drums"):
        (broken / f"{stem}.wav").write_bytes(b"not audio at all")
    assert main(["prepare", str(broken.parent.parent), str(tmp_path / "o2")]) == 1
    assert "every track failed" in capsys.readouterr().err
