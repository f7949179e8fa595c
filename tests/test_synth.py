"""The built-in data set: layout, lengths, rates, determinism, and that drums follow the bass."""
import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from cycledrums_cli import main


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.wav")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_durations_rates(synth_data):
    tracks = sorted(p for p in synth_data.glob("*/*") if p.is_dir())
    assert [p.parent.name for p in tracks].count("train") == 4
    assert [p.parent.name for p in tracks].count("test") == 2
    for track in tracks:
        assert sorted(f.name for f in track.iterdir()) == ["bass.wav", "drums.wav", "mixture.wav", "other.wav"]
        for f in track.iterdir():
            info = sf.info(f)
            assert info.samplerate == 44100 and info.channels == 2
            assert info.frames == 16 * 44100
    meta = json.loads((synth_data / "synth.json").read_text())
    assert len(meta["tracks"]) == 6 and all(90 <= t["bpm"] <= 140 for t in meta["tracks"])


def test_mixture_is_sum_of_stems(synth_data):
    track = next(synth_data.glob("train/*"))
    stems = sum(sf.read(track / f"{s}.wav")[0] for s in ("bass", "drums", "other"))
    mix = sf.read(track / "mixture.wav")[0]
    assert np.abs(mix - stems).max() < 3 / 32768  # 16-bit rounding of four files


def test_same_seed_same_files_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert main(["synth", str(tmp_path / name), "--tracks", "2", "--seconds", "3", "--seed", str(seed)]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_kicks_land_on_bass_notes(synth_data):
    """Every bass note onset has a kick at the same time: drums follow the bass."""
    track = next(synth_data.glob("train/*"))
    bass = sf.read(track / "bass.wav")[0].mean(axis=1)
    drums = sf.read(track / "drums.wav")[0].mean(axis=1)
    hop = 441  # 10 ms
    def energy(x):
        frames = x[: len(x) // hop * hop].reshape(-1, hop)
        return (frames ** 2).sum(axis=1)
    eb = energy(bass)
    onsets = np.nonzero((eb[1:] > 4 * eb[:-1] + 1e-6) & (eb[1:] > 0.05 * eb.max()))[0] + 1
    assert len(onsets) >= 8
    low = energy(np.convolve(drums, np.ones(40) / 40, mode="same"))  # low-passed drums ~ kick
    hits = [low[o - 2:o + 3].max() > 4 * low[max(0, o - 8):o - 2].mean() + 1e-9 for o in onsets]
    assert np.mean(hits) > 0.9


@pytest.mark.parametrize("args,msg", [(["--tracks", "0"], "--tracks"), (["--seconds", "0.1"], "--seconds")])
def test_bad_arguments(tmp_path, capsys, args, msg):
    assert main(["synth", str(tmp_path / "x"), *args]) == 2
    assert msg in capsys.readouterr().err
