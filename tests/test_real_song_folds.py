"""benchmarks/real_song_folds.py: one fine-tuned run per held-out song, trained on the other songs' stems."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.test_generate import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SCRIPT = ROOT / "benchmarks" / "real_song_folds.py"
SONGS = {"lithium-a": 0.0, "lithium-b": 2.4}  # the second "song": the excerpt from 2.4 s, other windows


def _folds(*argv: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def stems(tmp_path_factory) -> Path:
    """Two songs as Ogg stems (the format of real multitrack releases) and a drums-only folder."""
    root = tmp_path_factory.mktemp("stems")
    for name, offset in SONGS.items():
        (root / name).mkdir()
        for stem in ("bass", "drums"):
            audio, rate = sf.read(DATA / f"lithium_{stem}_31s.ogg")
            sf.write(root / name / f"{stem}.ogg", audio[int(offset * rate):], rate)
    (root / "drums-only").mkdir()
    (root / "drums-only" / "drums.flac").write_bytes((DATA / "lithium_drums_8s.flac").read_bytes())
    return root


@pytest.fixture(scope="module")
def folds(stems, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("folds")
    source = write_tiny_checkpoint(tmp_path_factory.mktemp("source") / "run" / "checkpoint_000000", seed=3)
    done = _folds(str(stems), str(out), "--steps", "2", "--init-from", str(source.parent), "--real-weight", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    return out, source, done


def test_each_fold_trains_on_the_other_songs_only(folds):
    out, _, done = folds
    assert "skipping drums-only: no bass stem" in done.stdout
    record = {r["held_out"]: r for r in json.loads((out / "folds.json").read_text())["folds"]}
    assert sorted(record) == sorted(SONGS)
    for song in SONGS:
        (other,) = set(SONGS) - {song}
        assert record[song]["training_songs"] == [other]
        assert sorted(p.name for p in (out / song / "songs" / "train").iterdir()) == [other]
        windows = json.loads((out / song / "windows" / "_summary.json").read_text())
        assert windows["tracks_ok"] == 1 and windows["splits"]["train"]["windows"] == record[song]["windows"] > 0


def test_real_weight_links_each_window_file_that_many_times(folds):
    out, _, _ = folds
    for song in SONGS:
        real = sorted(p.name for p in (out / song / "windows" / "train").glob("*.parquet"))
        mixed = sorted(p.name for p in (out / song / "mix" / "train").glob("*.parquet"))
        assert mixed == sorted(f"real{k}-{name}" for k in range(2) for name in real)
        assert all(p.is_symlink() for p in (out / song / "mix" / "train").iterdir())


def test_runs_are_fine_tuned_from_the_source_and_end_at_the_step(folds):
    from train.checkpoint import read_config, read_progress, resolve_checkpoint

    out, source, _ = folds
    for song in SONGS:
        checkpoint = resolve_checkpoint(str(out / song / "run"))
        config = read_config(checkpoint)
        assert read_progress(checkpoint)["step"] == 2
        assert config["init_from"] == str(source.parent) and (config["ngf"], config["n_blocks"]) == (8, 2)


def test_a_second_run_skips_what_is_done(folds, stems):
    out, source, _ = folds
    done = _folds(str(stems), str(out), "--steps", "2", "--init-from", str(source.parent), "--real-weight", "2",
                  timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "folds.json").read_text())["folds"]
    assert all(r["prepare_s"] < 5 and r["train_s"] < 5 for r in record), record


def test_bad_arguments_are_one_line_errors(stems, tmp_path):
    done = _folds(str(stems), str(tmp_path / "out"), "--steps", "0", timeout=60)
    assert done.returncode == 2 and "--steps and --real-weight must be at least 1" in done.stderr
    done = _folds(str(stems), str(tmp_path / "out"), "--steps", "2", "--with-windows", str(tmp_path), timeout=60)
    assert done.returncode == 2 and "no train/*.parquet window files" in done.stderr
    done = _folds(str(stems / "lithium-a"), str(tmp_path / "out"), "--steps", "2", timeout=60)
    assert done.returncode == 2 and "at least two songs" in done.stderr
