"""Bad audio every job meets (issue #31): NaN/Inf samples, truncated files, one unreadable
reference file among good ones, and report audio as long as a full song."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.mel import MelParams

RATE = 22050
PARAMS = MelParams()
REPO = Path(__file__).resolve().parent.parent


def _tone(seconds: float, rate: int = RATE, freq: float = 110.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


def _non_finite_wav(path: Path, value: float, seconds: float = 2.0) -> Path:
    """A float WAV (subtype FLOAT keeps NaN/Inf) with a burst of `value` at 1 s."""
    x = _tone(seconds)
    x[RATE:RATE + 100] = value
    sf.write(path, x, RATE, subtype="FLOAT")
    return path


def _truncated_wav(path: Path, keep: float = 0.6, seconds: float = 2.0) -> Path:
    """A valid PCM WAV cut short: the first `keep` of its bytes (an interrupted copy)."""
    buf = io.BytesIO()
    sf.write(buf, _tone(seconds), RATE, subtype="PCM_16", format="WAV")
    raw = buf.getvalue()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


# ---------------------------------------------------------------- the decoding place


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_samples_are_refused_with_the_file_name(tmp_path, value):
    from pipelines.audio import AudioError, NonFiniteAudioError, load_audio, read_audio

    path = _non_finite_wav(tmp_path / "broken export.wav", value)
    for source in (path, str(path)):
        with pytest.raises(NonFiniteAudioError) as info:
            load_audio(source, RATE)
        message = str(info.value)
        assert "broken export.wav" in message and "NaN or infinite" in message and "1.00 s" in message
        assert "\n" not in message and issubclass(NonFiniteAudioError, AudioError)
    named = io.BytesIO(path.read_bytes())
    named.name = "s3://bucket/song/bass.wav"
    with pytest.raises(NonFiniteAudioError, match="s3://bucket/song/bass.wav"):
        read_audio(named)
    with pytest.raises(NonFiniteAudioError, match="<in-memory audio>"):
        read_audio(path.read_bytes())
    # allow_silent does not let it through either: it is not silence.
    with pytest.raises(NonFiniteAudioError):
        load_audio(path, RATE, allow_silent=True)


@pytest.mark.timeout(60)
def test_silence_and_loud_float_files_stay_normal_inputs(tmp_path):
    from pipelines.audio import SilentAudioError, load_audio

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(RATE, np.float32), RATE, subtype="FLOAT")
    assert float(load_audio(silent, RATE, allow_silent=True).abs().max()) == 0.0
    with pytest.raises(SilentAudioError):  # refused only where the job asks (as before)
        load_audio(silent, RATE)
    loud = tmp_path / "loud.wav"
    sf.write(loud, 3.0 * _tone(1.0), RATE, subtype="FLOAT")  # float files may exceed 1: finite, kept
    assert float(load_audio(loud, RATE).abs().max()) > 1.0


@pytest.mark.timeout(60)
def test_truncated_wav_is_refused_with_both_lengths(tmp_path):
    from pipelines.audio import AudioError, TruncatedAudioError, load_audio, read_audio

    path = _truncated_wav(tmp_path / "cut.wav", keep=0.6)
    with pytest.raises(TruncatedAudioError) as info:
        load_audio(path, RATE)
    message = str(info.value)
    assert str(path) in message and "truncated" in message and "declares 2.00 s" in message
    assert "\n" not in message and issubclass(TruncatedAudioError, AudioError)
    named = io.BytesIO(path.read_bytes())
    named.name = "cut.wav"
    with pytest.raises(TruncatedAudioError, match="cut.wav: truncated"):
        read_audio(named)
    # The whole file, and a streamed WAV (data size 0xFFFFFFFF: unknown), are fine.
    whole = tmp_path / "whole.wav"
    sf.write(whole, _tone(2.0), RATE, subtype="PCM_16")
    assert load_audio(whole, RATE).shape[0] == 2 * RATE
    raw = bytearray(whole.read_bytes())
    data_at = raw.index(b"data")
    raw[data_at + 4:data_at + 8] = b"\xff\xff\xff\xff"
    assert read_audio(bytes(raw))[0].shape[0] == 2 * RATE


# ---------------------------------------------------------------- every job gets it from there


@pytest.mark.timeout(120)
def test_roundtrip_refuses_nan_and_truncated_input(tmp_path, capsys):
    from cycledrums_cli import main

    for path, reason in ((_non_finite_wav(tmp_path / "nan.wav", np.nan), "NaN or infinite"),
                         (_truncated_wav(tmp_path / "cut.wav"), "truncated")):
        out = tmp_path / f"out-{path.stem}.wav"
        assert main(["roundtrip", str(path), str(out), "--griffin-lim-iters", "2"]) == 2
        err = capsys.readouterr().err
        assert path.name in err and reason in err and "Traceback" not in err
        assert "nan dB" not in err and "mel error" not in err and not out.exists()


@pytest.mark.timeout(120)
def test_generate_decode_turns_nan_and_truncated_bass_into_error_rows(tmp_path):
    from infer.generate_decode import decode_batch

    good = tmp_path / "good.wav"
    sf.write(good, _tone(3.0), RATE, subtype="FLOAT")
    nan = _non_finite_wav(tmp_path / "nan.wav", np.nan, seconds=3.0)
    cut = _truncated_wav(tmp_path / "cut.wav", seconds=3.0)
    ids = ["good", "nan", "cut"]
    batch = decode_batch({"clip_id": np.array(ids, dtype=object),
                          "uri": np.array([str(good), str(nan), str(cut)], dtype=object)},
                         PARAMS.to_dict(), None)
    rows = {str(c): str(e) for c, e in zip(batch["clip_id"], batch["error"])}
    assert rows["good"] == ""
    assert "nan.wav" in rows["nan"] and "NaN or infinite" in rows["nan"]
    assert "cut.wav" in rows["cut"] and "truncated" in rows["cut"]


@pytest.mark.timeout(120)
def test_prepare_decode_refuses_a_nan_stem(tmp_path):
    import pyarrow as pa

    from pipelines import prepare_stages as prepare

    track = tmp_path / "train" / "t1"
    track.mkdir(parents=True)
    _non_finite_wav(track / "bass.wav", np.nan, seconds=8.0)
    sf.write(track / "drums.wav", _tone(8.0, freq=200.0), RATE, subtype="FLOAT")
    row = {f.name: None for f in prepare.TRACK_FIELDS}
    row.update(track_id="t1", split="train", status="pending", stage="", reason="", seconds=0.0,
               transient=False, warning="", path=str(track),
               sources=json.dumps({"bass": str(track / "bass.wav"), "drums": str(track / "drums.wav")}))
    table = pa.Table.from_pylist([row], schema=prepare.TRACK_SCHEMA)
    out = prepare.decode_stems(table, PARAMS, None).to_pylist()[0]
    assert out["status"] == "failed" and out["stage"] == "decode"
    assert "bass.wav" in out["reason"] and "NaN or infinite" in out["reason"] and not out["bass"]


# ---------------------------------------------------------------- one bad reference file


def _reference(root: Path, ids: list[str], bad: str) -> list[dict]:
    """score's audio reference rows; clip `bad` has an unreadable drums file."""
    rows = []
    for k, clip_id in enumerate(ids):
        folder = root / clip_id
        folder.mkdir(parents=True)
        if clip_id == bad:
            (folder / "drums.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
        else:
            sf.write(folder / "drums.wav", _tone(2.0, freq=300.0 + 50 * k), RATE, subtype="FLOAT")
        sf.write(folder / "bass.wav", _tone(2.0, freq=55.0 + 5 * k), RATE, subtype="FLOAT")
        rows.append({"clip_id": clip_id, "drums_uri": str(folder / "drums.wav"),
                     "bass_uri": str(folder / "bass.wav")})
    return rows


@pytest.mark.timeout(120)
def test_one_unreadable_drums_file_fails_only_its_own_clip(tmp_path):
    from infer import score_stages as stages

    ids = ["a", "b", "c"]
    for seed in range(4):  # every seed: whichever clip had the bad one as its partner
        rows = stages.audio_reference_rows(_reference(tmp_path / f"s{seed}", ids, bad="b"), True, seed)
        assert any(r["other_id"] == "b" for r in rows)  # someone's first partner is the bad clip
        batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
        out = stages.audio_reference_batch(batch, PARAMS.to_dict(), None)
        result = {str(c): (str(e), str(o), bytes(img)) for c, e, o, img in
                  zip(out["clip_id"], out["ref_error"], out["other_id"], out["other_image"])}
        assert "b/drums.wav" in result["b"][0] and "not a readable audio file" in result["b"][0]
        for clip_id, partner in (("a", "c"), ("c", "a")):
            error, other_id, other_image = result[clip_id]
            assert error == "" and other_id == partner and other_image  # another usable clip's drums


@pytest.mark.timeout(60)
def test_partner_candidates_prefer_the_derangement_then_the_same_song():
    from infer.baselines import partner_candidates, song_derangement

    ids = ["s1/w0", "s1/w1", "s1/w2", "s2/w0", "s2/w1", "lone"]
    first = song_derangement(ids, 5)
    candidates = partner_candidates(ids, 5, limit=4)
    for i, options in enumerate(candidates):
        assert options[0] == first[i] and i not in options and len(set(options)) == len(options) == 4
        song = ids[i].rsplit("/", 1)[0] if "/" in ids[i] else ""
        same = [j for j in range(len(ids)) if j != i and ids[j].startswith(song + "/")] if song else []
        assert set(same) <= set(options)
    assert partner_candidates(ids, 5) == partner_candidates(ids, 5)  # seeded


@pytest.mark.timeout(600)
def test_score_with_three_clips_and_one_bad_drums_file_scores_the_other_two(ray_local, tmp_path):
    """Before: the bad file's partner failed with it, and the job stopped on 'need at least 2
    usable reference clips'.  Now: one error row, the two good clips and their baselines scored."""
    import pandas as pd

    from cycledrums_cli import main
    from infer.inception import save_random_weights

    weights = str(save_random_weights(str(tmp_path / "inception_seed0.pth"), seed=0))
    ids = ["a", "b", "c"]
    _reference(tmp_path / "ref", ids, bad="b")
    gen = tmp_path / "gen"
    gen.mkdir()
    for k, clip_id in enumerate(ids):
        sf.write(gen / f"{clip_id}.wav", 0.5 * _tone(2.0, freq=310.0 + 50 * k), RATE, subtype="FLOAT")
    out = tmp_path / "out"
    rc = main(["score", f"model={gen}", str(tmp_path / "ref"), str(out), "--inception-weights", weights,
               "--report-clips", "0"])
    assert rc == 0
    clips = pd.read_parquet(out / "clips.parquet")
    generated = clips[~clips["baseline"]]
    assert sorted(generated["clip_id"]) == ["a", "c"]
    other = clips[clips["set"] == "other-clip"]
    assert sorted(other["clip_id"]) == ["a", "c"]
    errors = pd.read_csv(out / "errors.csv")
    assert "b" in set(errors["clip_id"]) and set(errors["clip_id"]) <= {"b"}
    assert errors["reason"].str.contains("b/drums.wav").all()


# ---------------------------------------------------------------- report audio of a full song

_ENCODE = """
import sys
import numpy as np
import soundfile as sf, io
from infer.media import ogg_bytes
seconds = float(sys.argv[1])
x = (0.3 * np.sin(np.arange(int(22050 * seconds)) * 0.0157)).astype('f4')
data = ogg_bytes(x, 22050)
back, rate = sf.read(io.BytesIO(data), dtype='float32')
print(len(data), len(back), rate)
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seconds", [180.0, 3.5])
def test_report_ogg_of_a_long_clip_does_not_crash(seconds):
    # In a subprocess: before the fix one Vorbis write of a 3-minute clip is a segfault (rc -11),
    # which must fail this test rather than kill pytest.
    proc = subprocess.run([sys.executable, "-c", _ENCODE, str(seconds)], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    size, frames, rate = map(int, proc.stdout.split())
    assert rate == 22050 and abs(frames - int(22050 * seconds)) <= 2048 and size > 1000
