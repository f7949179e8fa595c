"""`cycledrums grooves`: Groove MIDI performances -> stems that `prepare` reads.

Uses the five Groove MIDI files in tests/data/groove (see tests/data/README.md) plus
broken files made here.  Checks the layout, levels, errors table, selection,
determinism (in-process vs Ray), that the bass starts on the drummer's own kicks
(micro-timing kept), that the fast one-shot renderer matches a full midirenderer
render, and that prepare accepts the corpus.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import torch

from conftest import DATA
from cycledrums_cli import main
from pipelines.groove_bass import KICKS, merged_times
from pipelines.grooves import GroovesConfig, GroovesError, read_info, select

# The sound bank's disk cache goes to a temp folder, not ~/.cache (set at import, before the
# session's Ray starts, so its workers inherit it).
os.environ["CYCLEDRUMS_SOUNDBANK_CACHE"] = tempfile.mkdtemp(prefix="cycledrums-soundbank-")

GROOVE = DATA / "groove"
GOOD = {  # track -> output split (the dataset's validation take goes to test)
    "drummer3-session1-10_rock_105_beat_4-4": "train",
    "drummer3-session1-32_jazz_120_beat_4-4": "test",
    "drummer3-session2-31_hiphop_92_beat_4-4": "train",
    "drummer7-session2-102_pop_132_beat_4-4": "test",
    "drummer7-session2-77_funk_100_beat_4-4": "train",
}
BROKEN = {  # file -> (error stage, words in the reason)
    "drummer9/session1/1_rock_100_beat_4-4.mid": ("render", "not a readable MIDI"),
    "drummer9/session1/2_rock_100_beat_4-4.mid": ("render", "empty"),
    "drummer9/session1/3_rock_100_beat_4-4.mid": ("render", "no drum notes"),
    "drummer9/session1/4_rock_100_beat_4-4.mid": ("read", "not found"),
}


def _info_row(midi: str, style="rock", beat_type="beat", duration="12.0", split="train") -> list[str]:
    return ["drummer9", "drummer9/session1", midi[:-4], style, "100", beat_type, "4-4", midi,
            midi[:-4] + ".wav", duration, split]


def _piano_only_midi() -> bytes:
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(80, 60, 0.0, 10.0))
    pm.instruments.append(piano)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def groove_dir(tmp_path_factory):
    """The test performances plus broken files (and a fill take that the default skips)."""
    root = tmp_path_factory.mktemp("groove") / "groove-midi"
    shutil.copytree(GROOVE, root)
    folder = root / "drummer9" / "session1"
    folder.mkdir(parents=True)
    names = list(BROKEN)
    (root / names[0]).write_bytes(b"MThd\x00\x00\x00\x06\x00\x01" + bytes(range(40)))  # corrupt
    (root / names[1]).write_bytes(b"")  # empty
    (root / names[2]).write_bytes(_piano_only_midi())  # no drums
    # names[3] is listed in info.csv but missing on disk
    shutil.copy(GROOVE / "drummer7/session2/77_funk_100_beat_4-4.mid", folder / "5_funk_100_fill_4-4.mid")
    with open(root / "info.csv", "a", newline="") as f:
        writer = csv.writer(f)
        for name in names:
            writer.writerow(_info_row(name))
        writer.writerow(_info_row("drummer9/session1/5_funk_100_fill_4-4.mid", "funk", "fill", "9.4"))
    return root


@pytest.fixture(scope="module")
def corpus(ray_local, groove_dir, tmp_path_factory):
    """`cycledrums grooves` on Ray, as a user runs it."""
    out = tmp_path_factory.mktemp("grooves") / "corpus"
    assert main(["grooves", str(groove_dir), str(out), "--seed", "3"]) == 0
    return out


def _wav_digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x ** 2) + 1e-20)


@pytest.mark.timeout(300)
def test_layout_levels_and_metadata(corpus):
    folders = {p.name: p.parent.name for p in corpus.glob("*/*") if p.is_dir()}
    assert folders == GOOD
    info = {r["midi_filename"]: r for r in read_info(str(GROOVE))}
    meta = json.loads((corpus / "grooves.json").read_text())
    by_track = {t["track"]: t for t in meta["tracks"]}
    assert set(by_track) == set(GOOD)
    for track, split in GOOD.items():
        folder = corpus / split / track
        assert sorted(f.name for f in folder.iterdir()) == ["bass.wav", "drums.wav", "mixture.wav"]
        stems = {}
        for f in folder.iterdir():
            i = sf.info(f)
            assert (i.samplerate, i.channels, i.subtype) == (44100, 2, "PCM_16")
            stems[f.stem] = sf.read(f)[0]
        row = info[by_track[track]["midi"]]
        assert stems["drums"].shape[0] / 44100 == pytest.approx(float(row["duration"]), abs=0.2)
        # mixture = bass + drums (16-bit rounding of three files)
        assert np.abs(stems["mixture"] - stems["bass"] - stems["drums"]).max() < 3 / 32768
        # Groove MIDI renders quietly; the stems are brought to a usable, fixed level.
        assert -28.5 < _rms_db(stems["drums"]) < -25.5 and np.abs(stems["drums"]).max() < 0.61
        assert -30.5 < _rms_db(stems["bass"]) < -27.5 and np.abs(stems["bass"]).max() < 0.39
        assert np.abs(stems["mixture"]).max() < 0.99
        t = by_track[track]
        assert (t["style"], t["bpm"], t["drummer"], t["dataset_split"]) == (
            row["style"], float(row["bpm"]), row["drummer"], row["split"])
        assert t["split"] == split and t["bass_notes"] > 0
    # Bass sounds by style: picked bass for rock, synth bass for hip-hop, upright for jazz.
    assert by_track["drummer3-session1-10_rock_105_beat_4-4"]["bass_program"] == 34
    assert by_track["drummer3-session2-31_hiphop_92_beat_4-4"]["bass_program"] == 38
    assert by_track["drummer3-session1-32_jazz_120_beat_4-4"]["bass_program"] == 32


@pytest.mark.timeout(300)
def test_bad_midi_files_are_listed_and_the_job_goes_on(corpus):
    with open(corpus / "_errors.csv") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(BROKEN)  # the fill take was not selected, so it is no error
    for path, (stage, words) in BROKEN.items():
        assert rows[path]["stage"] == stage and words in rows[path]["reason"], rows[path]
        assert not (corpus / "train" / path[:-4].replace("/", "-")).exists()


@pytest.mark.timeout(300)
def test_same_seed_same_bytes_in_process_and_on_ray(corpus, groove_dir, tmp_path):
    assert main(["grooves", str(groove_dir), str(tmp_path / "same"), "--seed", "3", "--in-process"]) == 0
    assert _wav_digests(tmp_path / "same") == _wav_digests(corpus)
    assert (tmp_path / "same" / "grooves.json").read_bytes() == (corpus / "grooves.json").read_bytes()
    # Another seed: another bass part (key, progression, notes); the drums are the performance.
    assert main(["grooves", str(GROOVE), str(tmp_path / "other"), "--seed", "4", "--in-process",
                 "--styles", "rock,funk"]) == 0
    other = _wav_digests(tmp_path / "other")
    assert len(other) == 6
    for name, digest in other.items():
        assert (digest == _wav_digests(corpus)[name]) == name.endswith("drums.wav")


def _onsets(stereo: np.ndarray, rate: int = 44100, hop: int = 44, n_fft: int = 1024) -> np.ndarray:
    """Note onsets (s): peaks of the spectral flux (log-magnitude rise), 1 ms hop."""
    mono = torch.from_numpy(stereo.mean(axis=1)).float()
    spec = torch.stft(mono, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    logs = torch.log1p(1000 * spec)
    flux = torch.clamp(logs[:, 1:] - logs[:, :-1], min=0).sum(0).numpy()
    peaks = [i for i in range(1, len(flux) - 1)
             if flux[i] > 0.2 * flux.max() and flux[i] >= flux[i - 1] and flux[i] > flux[i + 1]]
    return (np.array(peaks) + 1) * hop / rate


def _offsets(onsets: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.array([onsets[np.argmin(np.abs(onsets - t))] - t for t in times])


@pytest.mark.timeout(300)
def test_bass_notes_start_on_the_drummers_own_kicks(corpus):
    """Onsets heard in the rendered bass vs the kick times in the MIDI: the same times,
    with the drummer's micro-timing (the kicks snapped to the 16th grid do NOT match)."""
    human, grid = [], []
    for track, split in GOOD.items():
        midi = pretty_midi.PrettyMIDI(str(GROOVE / (track.replace("-", "/", 2) + ".mid")))
        kicks = np.array(merged_times([n.start for n in midi.instruments[0].notes if n.pitch in KICKS]))
        if len(kicks) < 5:
            continue  # the jazz take: brushes, one kick; its bass walks on the beats
        onsets = _onsets(sf.read(corpus / split / track / "bass.wav")[0])
        sixteenth = 60.0 / midi.get_tempo_changes()[1][0] / 4
        human.append(_offsets(onsets, kicks))
        grid.append(_offsets(onsets, np.round(kicks / sixteenth) * sixteenth))
    human, grid = np.concatenate(human), np.concatenate(grid)
    assert len(human) >= 60
    assert np.mean(np.abs(human) < 0.01) > 0.97  # a bass onset within 10 ms of every kick
    matched = human[np.abs(human) < 0.01]
    assert abs(np.median(matched)) < 0.003 and np.std(matched) < 0.004
    snapped = grid[np.abs(grid) < 0.03]
    assert np.std(snapped) > 2 * np.std(matched)  # the grid is not what the bass follows


@pytest.mark.timeout(120)
def test_one_shot_rendering_matches_a_full_midirenderer_render():
    """The sound bank sums per-note renders; a full render of the file sounds the same."""
    import midirenderer

    from pipelines.audio import resample
    from pipelines.groove_render import drum_notes
    from pipelines.grooves import SAMPLE_RATE, read_drums
    from pipelines.soundbank import default_soundfont_path, shared_bank

    data = (GROOVE / "drummer7/session2/77_funk_100_beat_4-4.mid").read_bytes()
    notes, _, end = read_drums(data, "funk")
    bank = shared_bank(default_soundfont_path())
    ours = bank.render(drum_notes(notes), int(round(end * SAMPLE_RATE))).mean(axis=0)
    # The full render, with the same Roland -> General MIDI note map applied to the file.
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    for n in pm.instruments[0].notes:
        n.pitch = {22: 42, 26: 46, 58: 43}.get(n.pitch, n.pitch)
    buf = io.BytesIO()
    pm.write(buf)
    full, rate = sf.read(io.BytesIO(midirenderer.render_wave_from(bank.soundfont, buf.getvalue())),
                         dtype="float32")
    full = resample(torch.from_numpy(full.mean(axis=1)), rate, SAMPLE_RATE).numpy()
    n = min(len(full), len(ours)) // 441 * 441
    env_full = np.sqrt((full[:n].reshape(-1, 441) ** 2).mean(axis=1))  # 10 ms loudness
    env_ours = np.sqrt((ours[:n].reshape(-1, 441) ** 2).mean(axis=1))
    assert np.corrcoef(env_full, env_ours)[0, 1] > 0.98
    assert np.sum(env_ours ** 2) == pytest.approx(np.sum(env_full ** 2), rel=0.1)


def test_one_shots_cached_on_disk_are_the_rendered_ones(tmp_path):
    from pipelines.soundbank import NoteKey, SoundBank, default_soundfont_path, drum_note

    with open(default_soundfont_path(), "rb") as f:
        soundfont = f.read()
    keys = [NoteKey(True, 0, 38, 100, 0.1), NoteKey(False, 33, 40, 96, 0.4), drum_note(0.0, 42, 57, 0.1).key]
    fresh = SoundBank(soundfont, str(tmp_path))
    fresh.ensure(keys)
    assert fresh.rendered_seconds > 0 and len(list(tmp_path.rglob("*.npy"))) == 3
    again = SoundBank(soundfont, str(tmp_path))
    again.ensure(keys)
    assert again.rendered_seconds == 0  # loaded, not rendered
    for key in keys:
        assert again.shots[key].dtype == np.float32
        assert np.array_equal(again.shots[key], fresh.shots[key])
    # A damaged cache file is rendered again, not trusted.
    next(tmp_path.rglob("*.npy")).write_bytes(b"garbage")
    third = SoundBank(soundfont, str(tmp_path))
    third.ensure(keys)
    assert 0 < third.rendered_seconds < fresh.rendered_seconds
    assert all(np.array_equal(third.shots[k], fresh.shots[k]) for k in keys)


def test_selection_by_style_split_and_count_is_seeded():
    rows = read_info(str(GROOVE))
    pick = lambda **kw: [j["track"] for j in select(rows, GroovesConfig("g", "o", **kw))]  # noqa: E731
    assert pick() == sorted(GOOD)
    assert pick(styles=["rock", "funk"]) == ["drummer3-session1-10_rock_105_beat_4-4",
                                             "drummer7-session2-77_funk_100_beat_4-4"]
    assert pick(splits=["validation"]) == ["drummer7-session2-102_pop_132_beat_4-4"]
    assert pick(min_seconds=12.0) == [t for t in sorted(GOOD) if "jazz" not in t and "funk" not in t]
    samples = {tuple(pick(max_tracks=2, seed=s)) for s in range(8)}
    assert len(samples) > 1  # the seed draws the sample ...
    assert pick(max_tracks=2, seed=5) == pick(max_tracks=2, seed=5)  # ... deterministically
    for sample in samples:  # and keeps one held-out track
        assert sorted(GOOD[t] for t in sample) == ["test", "train"]


def test_user_errors_exit_2_with_a_message(tmp_path, capsys, groove_dir):
    assert main(["grooves", str(GROOVE), str(tmp_path / "a"), "--styles", "polka"]) == 2
    assert "unknown style(s) polka" in capsys.readouterr().err
    assert main(["grooves", str(tmp_path / "nowhere"), str(tmp_path / "b")]) == 2
    assert "info.csv" in capsys.readouterr().err
    with pytest.raises(GroovesError, match="--max-tracks"):
        select(read_info(str(GROOVE)), GroovesConfig("g", "o", max_tracks=0))
    # Nothing usable selected -> exit 2, and the errors table says why.
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    lines = (groove_dir / "info.csv").read_text().splitlines()
    (only_broken / "info.csv").write_text("\n".join([lines[0]] + [l for l in lines if "drummer9" in l]) + "\n")
    shutil.copytree(groove_dir / "drummer9", only_broken / "drummer9")
    assert main(["grooves", str(only_broken), str(tmp_path / "c"), "--in-process"]) == 2
    assert "no track was written" in capsys.readouterr().err
    assert len((tmp_path / "c" / "_errors.csv").read_text().splitlines()) == 1 + len(BROKEN)


@pytest.mark.timeout(300)
def test_prepare_reads_the_corpus(corpus, ray_local, tmp_path):
    from pipelines.prepare import PrepareConfig, run_prepare

    summary = run_prepare(PrepareConfig(input=str(corpus), output=str(tmp_path / "windows")))
    assert summary["layout"] == "stems"
    assert summary["tracks_ok"] == len(GOOD) and summary["tracks_failed"] == 0
    assert summary["splits"]["train"]["tracks"] == 3 and summary["splits"]["test"]["tracks"] == 2
    assert summary["windows_written"] >= len(GOOD)


@pytest.mark.timeout(300)
def test_s3_in_and_out(s3_endpoint, s3_bucket):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for path in GROOVE.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=s3_bucket, Key=f"groove/{path.relative_to(GROOVE)}", Body=path.read_bytes())
    src, dst = f"s3://{s3_bucket}/groove", f"s3://{s3_bucket}/corpus"
    assert main(["grooves", src, dst, "--styles", "jazz", "--in-process", "--s3-endpoint-url", s3_endpoint]) == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="corpus/")["Contents"])
    track = "corpus/test/drummer3-session1-32_jazz_120_beat_4-4"
    assert keys == ["corpus/_errors.csv", "corpus/grooves.json"] + [f"{track}/{s}.wav" for s in
                                                                     ("bass", "drums", "mixture")]
    drums = s3.get_object(Bucket=s3_bucket, Key=f"{track}/drums.wav")["Body"].read()
    assert sf.info(io.BytesIO(drums)).samplerate == 44100


def test_max_seconds_keeps_the_start_of_each_take(tmp_path):
    assert main(["grooves", str(GROOVE), str(tmp_path / "c"), "--styles", "funk", "--max-seconds", "4",
                 "--in-process"]) == 0
    folder = tmp_path / "c" / "train" / "drummer7-session2-77_funk_100_beat_4-4"
    for stem in ("bass", "drums", "mixture"):
        assert sf.info(folder / f"{stem}.wav").frames == 4 * 44100
    assert main(["grooves", str(GROOVE), str(tmp_path / "d"), "--max-seconds", "0.5"]) == 2


def test_demo_takes_grooves_as_its_data():
    from cycledrums_demo import DemoError, DemoOptions
    from cycledrums_cli import build_parser

    def options(*argv):
        return DemoOptions.from_args(build_parser().parse_args(["demo", "out", *argv]))

    assert options().data == "synth"  # the default stays
    chosen = options("--quick", "--data", "grooves", "--groove-dir", str(GROOVE))
    assert (chosen.data, chosen.groove_dir) == ("grooves", str(GROOVE))
    with pytest.raises(DemoError, match="--groove-dir"):
        options("--data", "grooves")


@pytest.mark.timeout(300)
def test_a_rerun_with_another_selection_lists_every_track_in_out(tmp_path):
    """#31 item 11: grooves.json lists every track folder OUT holds, not only the last run's."""
    out = tmp_path / "corpus"
    common = ["--in-process", "--max-seconds", "2", "--min-seconds", "1"]
    assert main(["grooves", str(GROOVE), str(out), "--styles", "rock", *common]) == 0
    first = json.loads((out / "grooves.json").read_text())["tracks"]
    assert [t["track"] for t in first] == ["drummer3-session1-10_rock_105_beat_4-4"]
    assert main(["grooves", str(GROOVE), str(out), "--styles", "funk", *common]) == 0
    meta = json.loads((out / "grooves.json").read_text())
    assert [t["track"] for t in meta["tracks"]] == ["drummer3-session1-10_rock_105_beat_4-4",
                                                    "drummer7-session2-77_funk_100_beat_4-4"]
    assert meta["tracks"][0] == first[0]  # the earlier track keeps its own entry
    assert meta["selection"]["styles"] == ["funk"]  # the latest run's selection
    # A folder removed by hand drops out of the list at the next run.
    shutil.rmtree(out / "train" / "drummer3-session1-10_rock_105_beat_4-4")
    assert main(["grooves", str(GROOVE), str(out), "--styles", "funk", *common]) == 0
    listed = [t["track"] for t in json.loads((out / "grooves.json").read_text())["tracks"]]
    assert listed == ["drummer7-session2-77_funk_100_beat_4-4"]
