"""Audio loading: formats, mono/resample, and a clear error for every kind of bad input."""
import numpy as np
import pytest
import soundfile as sf

from conftest import DATA
from cycledrums_cli import main
from pipelines.audio import (
    EmptyAudioError, NotAudioError, SilentAudioError, load_audio, save_wav,
)


def test_loads_flac_stereo_44k_as_mono_22k():
    x = load_audio(DATA / "lithium_drums_8s.flac", 22050)
    assert x.ndim == 1 and x.dtype.name == "float32" if hasattr(x.dtype, "name") else True
    assert abs(x.shape[0] - 8 * 22050) <= 1


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_every_soundfile_format_decodes(tmp_path, fmt, ext):
    t = np.arange(44100) / 44100
    path = tmp_path / f"tone.{ext}"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 220 * t), 44100, format=fmt)
    x = load_audio(path, 22050)
    assert abs(x.shape[0] - 22050) < 2000  # lossy codecs pad a little
    assert 0.3 < float(x.abs().max()) < 0.7


def test_bytes_input(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.full(1000, 0.1), 22050)
    assert load_audio(path.read_bytes(), 22050).shape[0] == 1000


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_audio(tmp_path / "nope.wav", 22050)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty"):
        load_audio(path, 22050)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(NotAudioError, match="not a readable audio file"):
        load_audio(path, 22050)


def test_zero_length_signal(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0, 1)), 22050)
    with pytest.raises(EmptyAudioError, match="zero samples"):
        load_audio(path, 22050)


def test_all_silent_signal(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(22050), 22050)
    with pytest.raises(SilentAudioError, match="silent"):
        load_audio(path, 22050)
    assert load_audio(path, 22050, allow_silent=True).abs().max() == 0


def test_errors_are_value_errors_for_batch_jobs(tmp_path):
    assert issubclass(NotAudioError, ValueError) and issubclass(SilentAudioError, ValueError)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.flac"
    path.write_bytes(b"\x00garbage" * 100)
    assert main(["roundtrip", str(path), str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err
    assert "not a readable audio file" in err and "Traceback" not in err
    assert not (tmp_path / "out.wav").exists()


def test_save_wav_clips_and_roundtrips(tmp_path):
    path = tmp_path / "o.wav"
    save_wav(path, np.array([0.5, 2.0, -2.0], dtype=np.float32), 22050)
    data, rate = sf.read(path)
    assert rate == 22050 and np.allclose(data, [0.5, 1.0, -1.0], atol=1e-4)


@pytest.mark.parametrize("orig,new", [(44100, 22050), (48000, 22050), (22050, 44100), (11025, 22050),
                                      (88200, 22050), (16000, 22050), (22050, 22050)])
def test_fast_resample_gives_torchaudio_output(orig, new):
    # The codec's numbers must not depend on which resampler ran: the fast path is
    # torchaudio.functional.resample's filter, only applied differently.
    import torch
    import torchaudio.functional as AF

    from pipelines.audio import resample

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, orig // 2)).astype(np.float32))
    ours, reference = resample(x, orig, new), AF.resample(x, orig, new)
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) < 1e-5
