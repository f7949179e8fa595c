"""`cycledrums grooves` with the variety options of issue #30: several kits, bass programs,
held notes, rests and per-stem processing.

Uses the five Groove MIDI takes in tests/data/groove and pretty_midi's TimGM6mb.sf2, plus
SoundFonts made here from it (a copy under another name, a drum-only variant, a header that
says SoundFont 3): nothing installed by apt.  Each corpus is the first 8 s of each take,
rendered in this process.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile

import numpy as np
import pytest
import soundfile as sf

from conftest import DATA
from cycledrums_cli import build_parser, main
from pipelines.bass_realism import FADE_SECONDS, rest_runs, vary_bass
from pipelines.groove_kits import choose_kit, kit_problem, playable_drums, soundfont_paths
from pipelines.soundbank import Note, NoteKey, default_soundfont_path

# One-shots go to a temp folder, not ~/.cache (as in test_grooves.py).
os.environ.setdefault("CYCLEDRUMS_SOUNDBANK_CACHE", tempfile.mkdtemp(prefix="cycledrums-soundbank-"))

GROOVE = DATA / "groove"
ALL = ["--bass-programs", "33,34,38,39", "--bass-rests", "0.4", "--bass-skip", "0.3", "--processing"]
COMMON = ["--in-process", "--max-seconds", "8", "--min-seconds", "1"]
SILENCE = 1 / 32768  # "silent": below one 16-bit step, i.e. digital zero in the WAV


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    """Two kits: TimGM6mb and a copy of it under another name."""
    folder = tmp_path_factory.mktemp("kits")
    other = folder / "OtherKit.sf2"
    shutil.copy(default_soundfont_path(), other)
    return [default_soundfont_path(), str(other)]


def _grooves(out, seed, *argv) -> dict:
    assert main(["grooves", str(GROOVE), str(out), "--seed", str(seed), *COMMON, *argv]) == 0
    return json.loads((out / "grooves.json").read_text())


@pytest.fixture(scope="module")
def varied(tmp_path_factory, kits):
    """Every option on, seed 3."""
    out = tmp_path_factory.mktemp("varied") / "corpus"
    return out, _grooves(out, 3, "--soundfont", ",".join(kits), *ALL)


def _digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}


def _choices(meta: dict) -> dict:
    keys = ("soundfont", "bass_program", "bass_held", "bass_rests", "processing")
    return {t["track"]: {k: t[k] for k in keys} for t in meta["tracks"]}


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x)) + 1e-20))


def test_soundfont_takes_one_path_a_comma_list_or_a_repeated_flag():
    assert soundfont_paths("a.sf2") == ["a.sf2"]  # the old single-path usage
    assert soundfont_paths(["a.sf2,b.sf2", " c.sf2 "]) == ["a.sf2", "b.sf2", "c.sf2"]
    assert soundfont_paths(None) == []
    args = build_parser().parse_args(["grooves", "g", "o", "--soundfont", "a.sf2,b.sf2", "--soundfont", "c.sf2"])
    assert soundfont_paths(args.soundfont) == ["a.sf2", "b.sf2", "c.sf2"]
    assert build_parser().parse_args(["grooves", "g", "o"]).soundfont is None


def test_kit_choice_is_seeded_and_spreads_over_the_kits():
    kits = ["a.sf2", "b.sf2", "c.sf2"]
    drawn = [choose_kit(kits, seed) for seed in range(300)]
    assert drawn == [choose_kit(kits, seed) for seed in range(300)]
    assert all(60 < drawn.count(k) < 140 for k in kits)
    assert choose_kit(["only.sf2"], 5) == "only.sf2" and choose_kit([], 5) is None


@pytest.mark.timeout(300)
def test_same_seed_same_bytes_other_seed_other_choices(varied, kits, tmp_path):
    out, meta = varied
    again = _grooves(tmp_path / "again", 3, "--soundfont", ",".join(kits), *ALL)
    assert _digests(tmp_path / "again") == _digests(out)
    assert (tmp_path / "again" / "grooves.json").read_bytes() == (out / "grooves.json").read_bytes()
    assert meta["soundfonts"] == ["TimGM6mb.sf2", "OtherKit.sf2"]
    assert meta["selection"]["bass_programs"] == [33, 34, 38, 39]
    other = _grooves(tmp_path / "other", 4, "--soundfont", ",".join(kits), *ALL)
    mine, theirs = _choices(meta), _choices(other)
    assert set(mine) == set(theirs) == {t["track"] for t in meta["tracks"]} and len(mine) == 5
    for track in mine:
        assert mine[track]["processing"] != theirs[track]["processing"]
    assert [c["bass_rests"] for c in mine.values()] != [c["bass_rests"] for c in theirs.values()]
    assert _digests(tmp_path / "other") != _digests(out)


@pytest.mark.timeout(300)
def test_each_take_records_its_kit_and_choices(varied):
    _, meta = varied
    for t in meta["tracks"]:
        assert t["soundfont"] in ("TimGM6mb.sf2", "OtherKit.sf2")
        assert t["bass_soundfont"] == t["soundfont"]  # a General MIDI bank plays its own bass
        assert t["bass_program"] in (33, 34, 38, 39)
        assert set(t["processing"]) == {"drums", "bass"}
        assert t["bass_held"] >= 0 and t["bass_notes"] > 0
    assert sum(t["bass_held"] for t in meta["tracks"]) > 0
    assert sum(len(t["bass_rests"]) for t in meta["tracks"]) >= 3


@pytest.mark.timeout(300)
def test_every_file_has_the_drums_length_and_the_level_contract(varied):
    """Drums -26 dBFS RMS (lower only when their peak would pass 0.6), bass 2 dB under (or
    capped at 0.38), the mixture under full scale -- after processing, with rests."""
    out, meta = varied
    for t in meta["tracks"]:
        folder = out / t["split"] / t["track"]
        stems = {name: sf.read(folder / f"{name}.wav", dtype="float32")[0] for name in ("drums", "bass", "mixture")}
        assert {len(x) for x in stems.values()} == {len(stems["drums"])} == {8 * 44100}
        for name, (rms_db, peak) in {"drums": (-26.0, 0.6), "bass": (-28.0, 0.38)}.items():
            level, top = _rms_db(stems[name]), float(np.abs(stems[name]).max())
            assert level < rms_db + 0.1 and top <= peak + 1e-4, (t["track"], name, level, top)
            assert level > rms_db - 0.1 or top > peak - 0.01, (t["track"], name, level, top)
        assert np.abs(stems["mixture"]).max() < 0.99
        assert np.abs(stems["mixture"] - stems["bass"] - stems["drums"]).max() < 3 / 32768


@pytest.mark.timeout(300)
def test_the_bass_is_silent_over_its_rests_while_the_drums_play(varied):
    out, meta = varied
    checked = 0
    for t in meta["tracks"]:
        folder = out / t["split"] / t["track"]
        bass, drums = (sf.read(folder / f"{name}.wav", dtype="float32")[0] for name in ("bass", "drums"))
        for a, b in t["bass_rests"]:
            span = slice(int((a + FADE_SECONDS) * 44100) + 1, int(b * 44100))
            assert np.abs(bass[span]).max() < SILENCE, (t["track"], a, b)
            assert _rms_db(drums[span]) > -40, (t["track"], a, b)
            checked += 1
        # and it plays elsewhere (8 s are 3 or 4 bars: 0.4 of them rounds to 1 or 2)
        frames = bass[: len(bass) // 4410 * 4410].reshape(-1, 4410, 2)
        assert np.mean(np.abs(frames).max(axis=(1, 2)) > SILENCE) > 0.3
    assert checked >= 3


def test_rest_runs_cover_the_share_in_runs_and_leave_bass_to_play():
    rng = np.random.default_rng(0)
    for n_bars, share in ((16, 0.25), (6, 0.4), (3, 1.0), (10, 0.0)):
        runs = rest_runs(n_bars, share, rng)
        bars = [b for first, stop in runs for b in range(first, stop)]
        assert len(bars) == len(set(bars)) == min(round(share * n_bars), n_bars - 1)
        assert all(0 <= b < n_bars for b in bars)
        assert all(stop - first <= 4 for first, stop in runs)


def _part(style="drummer7/session2/77_funk_100_beat_4-4", seed=1):
    from pipelines.groove_bass import compose_bass
    from pipelines.grooves import _hits, read_drums

    notes, tempo, end = read_drums((GROOVE / f"{style}.mid").read_bytes(), style)
    hits, velocity = _hits(notes)
    return compose_bass(hits, velocity, "funk", tempo, 4.0, end, seed), 60.0 / tempo * 4, end


def test_held_notes_keep_each_bars_first_note_and_last_over_the_gap():
    part, bar, end = _part()
    same, info = vary_bass(part, {}, 7, bar, end, 0.5)
    assert same == part and info == {"bass_held": 0, "bass_rests": []}  # defaults: as composed
    held, info = vary_bass(part, {"bass_skip": 0.5}, 7, bar, end, 0.5)
    assert 0 < info["bass_held"] == len(part.notes) - len(held.notes)
    bar_of = lambda n: int((n.start + 0.06) // bar)  # noqa: E731
    assert {bar_of(n) for n in held.notes} == {bar_of(n) for n in part.notes}
    firsts = {bar_of(n): n for n in reversed(part.notes)}
    assert all(any(h.start == n.start for h in held.notes) for n in firsts.values())  # roots kept ...
    original = {n.start: n.duration for n in part.notes}
    assert any(n.duration > original[n.start] for n in held.notes)  # ... and notes held longer
    assert vary_bass(part, {"bass_skip": 0.5}, 7, bar, end, 0.5) == (held, info)


def test_bass_programs_are_drawn_from_the_list():
    part, bar, end = _part()
    drawn = {vary_bass(part, {"bass_programs": [33, 38, 39]}, seed, bar, end, 0.5)[0].program
             for seed in range(40)}
    assert drawn == {33, 38, 39}


def test_processing_is_the_same_on_one_thread_or_several():
    """Ray workers run one torch thread; the calling process several: same bytes."""
    import torch

    from pipelines.stem_processing import draw_chain, process_stem

    x = np.random.default_rng(0).standard_normal((2, 44100 * 2)).astype(np.float32) * 0.05
    chain = draw_chain(11, "drums")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = process_stem(x, chain, 11, "drums", 44100)
        torch.set_num_threads(max(2, threads))
        several = process_stem(x, chain, 11, "drums", 44100)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, several) and np.isfinite(one).all()
    assert not np.allclose(one / np.abs(one).max(), x / np.abs(x).max(), atol=1e-3)  # it did something


def _retagged_soundfont(source: str, dest, bank_from: int, bank_to: int, version: int | None = None):
    """A copy of `source` whose presets in bank `bank_from` move to `bank_to` (and whose header
    says `version`): how the tests make a drum-only kit or a SoundFont 3 header."""
    data = bytearray(open(source, "rb").read())
    phdr = data.find(b"phdr")
    size = struct.unpack("<I", data[phdr + 4:phdr + 8])[0]
    for i in range(size // 38 - 1):
        at = phdr + 8 + 38 * i + 22
        if struct.unpack("<H", data[at:at + 2])[0] == bank_from:
            data[at:at + 2] = struct.pack("<H", bank_to)
    if version is not None:
        ifil = data.find(b"ifil")
        data[ifil + 8:ifil + 10] = struct.pack("<H", version)
    dest.write_bytes(bytes(data))
    return str(dest)


@pytest.mark.timeout(300)
def test_a_drum_only_kit_takes_its_bass_from_a_general_midi_bank(tmp_path):
    drums_only = _retagged_soundfont(default_soundfont_path(), tmp_path / "DrumsOnly.sf2", 0, 7)
    assert kit_problem(drums_only) is None
    meta = _grooves(tmp_path / "out", 0, "--soundfont", drums_only, "--styles", "funk")
    (t,) = meta["tracks"]
    assert (t["soundfont"], t["bass_soundfont"]) == ("DrumsOnly.sf2", "TimGM6mb.sf2")
    folder = tmp_path / "out" / t["split"] / t["track"]
    assert _rms_db(sf.read(folder / "bass.wav")[0]) == pytest.approx(-28.0, abs=1.5)


def test_a_sound_the_kit_lacks_is_played_by_its_stand_in():
    class Bank:  # a kit with no second kick (35), as the AVL kits
        shots: dict = {}

        def ensure(self, keys):
            for key in keys:
                self.shots[key] = np.zeros((2, 10), np.float32) if key.pitch == 35 else np.ones((2, 10), np.float32)

    notes = [Note(0.0, NoteKey(True, 0, 35, 100, 0.1)), Note(0.5, NoteKey(True, 0, 38, 100, 0.1))]
    played = playable_drums(Bank(), notes)
    assert [n.key.pitch for n in played] == [36, 38] and played[0].start == 0.0


def test_bad_options_are_one_line_errors_before_anything_renders(tmp_path, capsys):
    sf3 = _retagged_soundfont(default_soundfont_path(), tmp_path / "Compressed.sf3", 0, 0, version=3)
    for argv, words in ((["--bass-rests", "1.5"], "--bass-rests is a share"),
                        (["--bass-skip", "-0.1"], "--bass-skip is a share"),
                        (["--bass-programs", "33,200"], "from 0 to 127"),
                        (["--bass-programs", "fingered"], "program numbers"),
                        (["--soundfont", str(tmp_path / "nowhere.sf2")], "cannot read the SoundFont"),
                        (["--soundfont", f"{default_soundfont_path()},{sf3}"], "SoundFont 3"),
                        (["--soundfont", f"{default_soundfont_path()},{default_soundfont_path()}"], "twice")):
        out = tmp_path / "out"
        assert main(["grooves", str(GROOVE), str(out), "--in-process", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and err.strip().count("\n") == 0, (argv, err)
        assert not (out / "_errors.csv").exists()  # nothing was rendered
