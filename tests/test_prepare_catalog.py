"""The catalog of `cycledrums prepare` (no Ray, no audio decoding): layouts, FMA metadata, splits,
output naming and atomic writes."""
from __future__ import annotations

import csv
from pathlib import Path

import fsspec
import pytest

from pipelines.catalog import (
    CatalogError,
    build_catalog,
    detect_layout,
    hash_split,
    read_fma_tracks,
)
from pipelines.prepare_stages import existing_outputs, remove_stale_temp_files, window_file_name
from pipelines.storage import write_bytes_atomic


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_fma_csv(path: Path, rows: list[tuple[int, str, str]]) -> None:
    """FMA's tracks.csv layout: section row, field row, 'track_id' row, then data."""
    sections = ["", "album", "album", "artist", "track", "track"]
    fields = ["", "id", "title", "name", "genre_top", "title"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(sections)
        w.writerow(fields)
        w.writerow(["track_id"] + [""] * (len(sections) - 1))
        for track_id, genre, album in rows:
            w.writerow([track_id, 7, album, "someone", genre, f"song {track_id}"])


def test_hash_split_is_deterministic_and_follows_the_fraction():
    ids = [f"{i:06d}" for i in range(4000)]
    splits = [hash_split(t, 0.2) for t in ids]
    assert splits == [hash_split(t, 0.2) for t in ids]
    share = splits.count("test") / len(ids)
    assert 0.17 < share < 0.23
    assert all(hash_split(t, 0.0) == "train" for t in ids[:100])
    assert all(hash_split(t, 1.0) == "test" for t in ids[:100])
    # Growing the fraction only moves tracks from train to test, never back.
    grown = [hash_split(t, 0.3) for t in ids]
    assert all(g == "test" for s, g in zip(splits, grown) if s == "test")


def test_stems_layout_detected_with_split_from_folders(tmp_path):
    for split, track in [("train", "A - One"), ("train", "B"), ("test", "C")]:
        for stem in ("mixture", "bass", "drums", "other"):
            touch(tmp_path / split / track / f"{stem}.wav")
    touch(tmp_path / "train" / "D" / "bass.flac")  # no drums stem
    touch(tmp_path / "train" / "E" / "mixture.wav")  # not a stems track at all
    touch(tmp_path / "README.txt")

    cat = build_catalog(str(tmp_path))
    assert cat.layout == "stems"
    by_id = {t.track_id: t for t in cat.tracks}
    assert sorted(by_id) == ["test/C", "train/A - One", "train/B", "train/D"]
    assert by_id["test/C"].split == "test" and by_id["train/B"].split == "train"
    assert by_id["train/A - One"].sources == {
        "bass": str(tmp_path / "train" / "A - One" / "bass.wav"),
        "drums": str(tmp_path / "train" / "A - One" / "drums.wav"),
    }
    assert by_id["train/D"].error and "drums" in by_id["train/D"].error
    assert all(t.error is None for i, t in by_id.items() if i != "train/D")


def test_stems_in_lossy_formats_count_and_a_lossless_copy_wins(tmp_path):
    for stem in ("bass", "drums", "other"):
        touch(tmp_path / "train" / "song" / f"{stem}.ogg")
    touch(tmp_path / "train" / "song" / "drums.flac")
    touch(tmp_path / "train" / "mp3" / "bass.mp3")
    touch(tmp_path / "train" / "mp3" / "drums.mp3")
    cat = build_catalog(str(tmp_path))
    assert cat.layout == "stems"
    by_id = {t.track_id: t for t in cat.tracks}
    assert by_id["train/song"].sources == {"bass": str(tmp_path / "train" / "song" / "bass.ogg"),
                                           "drums": str(tmp_path / "train" / "song" / "drums.flac")}
    assert by_id["train/mp3"].error is None and by_id["train/mp3"].sources["bass"].endswith("bass.mp3")


def test_stems_without_split_folders_use_the_hash(tmp_path):
    for track in ("x", "y"):
        touch(tmp_path / track / "bass.wav")
        touch(tmp_path / track / "drums.wav")
    cat = build_catalog(str(tmp_path), test_fraction=0.5)
    assert {t.track_id: t.split for t in cat.tracks} == {t: hash_split(t, 0.5) for t in ("x", "y")}


def test_mixes_layout_with_fma_metadata_filters_genres_and_live_albums(tmp_path):
    for name in ("000/000002.mp3", "000/000003.ogg", "000/000005.flac", "001/001000.wav",
                 "001/001001.mp3", "001/notes.txt"):
        touch(tmp_path / name)
    write_fma_csv(tmp_path / "tracks.csv", [
        (2, "Pop", "Sunny, Side"),
        (3, "Rock", "Live at the Roxy"),
        (5, "Soul-RnB", "Delivery Man"),  # 'live' inside a word is not a live album
        (1000, "Hip-Hop", "Beats"),
    ])
    cat = build_catalog(str(tmp_path), genres=["pop", "Rock", "Soul-RnB"], test_fraction=0.5)
    assert cat.layout == "mixes"
    assert [t.track_id for t in cat.tracks] == ["000/000002", "000/000005"]
    assert cat.tracks[0].sources == {"mix": str(tmp_path / "000" / "000002.mp3")}
    assert all(t.split == hash_split(t.track_id, 0.5) for t in cat.tracks)
    reasons = dict(cat.filtered)
    assert "live album" in reasons["000/000003"]
    assert "genre 'Hip-Hop'" in reasons["001/001000"]
    assert "not in tracks.csv" in reasons["001/001001"]

    # Without --genres every song stays except live albums; unknown ids are kept.
    cat = build_catalog(str(tmp_path))
    assert [t.track_id for t in cat.tracks] == ["000/000002", "000/000005", "001/001000", "001/001001"]


def test_fma_reader_takes_only_the_two_columns(tmp_path):
    write_fma_csv(tmp_path / "t.csv", [(7, "Pop", "A"), (8, "", "")])
    with open(tmp_path / "t.csv", newline="") as f:
        meta = read_fma_tracks(f)
    assert meta[7].genre_top == "Pop" and meta[7].album_title == "A"
    assert meta[8].genre_top == ""
    (tmp_path / "bad.csv").write_text("track_id,title\n1,x\n2,y\n")
    with open(tmp_path / "bad.csv", newline="") as f, pytest.raises(CatalogError, match="genre_top"):
        read_fma_tracks(f)


def test_bad_catalog_inputs_are_clear_errors(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        build_catalog(str(tmp_path / "nope"))
    touch(tmp_path / "empty" / "notes.txt")
    with pytest.raises(CatalogError, match="no audio files"):
        build_catalog(str(tmp_path / "empty"))
    touch(tmp_path / "songs" / "a.ogg")
    with pytest.raises(CatalogError, match="tracks.csv"):
        build_catalog(str(tmp_path / "songs"), genres=["Pop"])
    with pytest.raises(CatalogError, match="test fraction"):
        build_catalog(str(tmp_path / "songs"), test_fraction=1.5)
    assert detect_layout(["t/bass.wav", "t/drums.wav"]) == "stems"
    assert detect_layout(["a.mp3"]) == "mixes"


def test_window_file_names_are_safe_stable_and_unique():
    a = window_file_name("train/AC/DC - Back in Black")
    assert a == window_file_name("train/AC/DC - Back in Black")
    assert "/" not in a and a.endswith(".parquet") and not a.startswith((".", "_"))
    assert window_file_name("train/a b") != window_file_name("train/a_b")
    assert not window_file_name("_hidden").startswith("_")


def test_atomic_write_leaves_nothing_partial(tmp_path, monkeypatch):
    fs = fsspec.filesystem("file")
    target = str(tmp_path / "train" / "t.parquet")
    write_bytes_atomic(fs, target, b"complete")
    assert Path(target).read_bytes() == b"complete"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    # A folder where the file must go is an error, not a file moved into the folder.
    (tmp_path / "train" / "d.parquet").mkdir()
    with pytest.raises(OSError):
        write_bytes_atomic(fs, str(tmp_path / "train" / "d.parquet"), b"data")
    assert list((tmp_path / "train" / "d.parquet").iterdir()) == []
    (tmp_path / "train" / "d.parquet").rmdir()

    with monkeypatch.context() as m:
        m.setattr("pipelines.storage.os.replace", crash)
        with pytest.raises(OSError):
            write_bytes_atomic(fs, str(tmp_path / "train" / "u.parquet"), b"half")
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["t.parquet"]

    # A temp file from a killed run is never counted as done, and is cleaned up.
    touch(tmp_path / "train" / ".v.parquet.tmp-123", b"half")
    assert existing_outputs(fs, str(tmp_path)) == {"t.parquet": "train"}
    assert remove_stale_temp_files(fs, str(tmp_path)) == 1
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["t.parquet"]
