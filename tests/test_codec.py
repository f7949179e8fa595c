"""The mel codec: window arithmetic, quantization, round trip quality, batching."""
import json
import math

import pytest
import torch

from conftest import DATA
from cycledrums_cli import main
from pipelines.audio import load_audio
from pipelines.mel import (
    MelParams, audio_to_image, db_to_power, dequantize, image_to_audio,
    image_to_model, mel_power, mel_to_linear_power, model_to_image, num_frames, power_to_db,
    quantize,
)
from pipelines.windowing import cut_windows, window_starts

P = MelParams()
DRUMS = DATA / "lithium_drums_8s.flac"


def test_paper_parameters():
    assert (P.sample_rate, P.n_fft, P.hop_length, P.n_mels) == (22050, 2048, 512, 256)
    assert (P.window_frames, P.overlap_frames, P.stride_frames) == (256, 50, 206)
    assert MelParams.from_json(P.to_json()) == P


@pytest.mark.parametrize("seconds", [3.0, 5.94, 6.0, 10.0, 30.0, 61.5, 600.0])
def test_window_count_and_starts_follow_from_parameters(seconds):
    samples = int(seconds * 22050)
    frames = 1 + samples // 512
    audio = torch.zeros(samples)
    assert mel_power(audio).shape[-1] == frames == num_frames(samples)
    expected = 0 if frames < 256 else 1 + (frames - 256) // 206
    starts = window_starts(frames)
    assert len(starts) == expected
    assert starts == [206 * i for i in range(expected)]
    assert all(s + 256 <= frames for s in starts)
    # With pad_tail, the windows cover every frame and only the last one overhangs.
    padded = window_starts(frames, pad_tail=True)
    assert padded[-1] + 256 >= frames and padded[:len(starts)] == starts
    assert len(padded) - len(starts) in (0, 1)


def test_cut_windows_are_slices_of_the_image():
    image = torch.randint(0, 256, (256, 1000), dtype=torch.uint8)
    windows, starts = cut_windows(image)
    assert windows.shape == (len(starts), 256, 256) == (4, 256, 256)
    for w, s in zip(windows, starts):
        assert torch.equal(w, image[:, s:s + 256])
    padded, pstarts = cut_windows(image, pad_tail=True, pad_value=0)
    assert pstarts == [0, 206, 412, 618, 824]
    assert torch.equal(padded[-1, :, :1000 - 824], image[:, 824:])
    assert (padded[-1, :, 1000 - 824:] == 0).all()


def test_mel_power_is_torchaudios_mel_spectrogram():
    # mel_power computes the power as re^2 + im^2 for speed; the numbers must stay torchaudio's.
    import torchaudio.transforms as T

    p = MelParams()
    audio = load_audio(DATA / "lithium_bass_8s.flac", p.sample_rate)
    batch = torch.stack([audio, 0.01 * audio])
    reference = T.MelSpectrogram(sample_rate=p.sample_rate, n_fft=p.n_fft, win_length=p.n_fft,
                                 hop_length=p.hop_length, n_mels=p.n_mels, power=2.0)(batch)
    ours = mel_power(batch, p)
    assert ours.shape == reference.shape == (2, p.n_mels, num_frames(audio.shape[-1], p))
    assert float(((ours - reference).abs() / (reference + 1e-12)).max()) < 1e-4


def test_quantization_error_is_at_most_half_a_step():
    db = torch.linspace(P.db_min, P.db_max, 100_003)
    err = (dequantize(quantize(db)) - db).abs().max().item()
    assert err <= P.db_step / 2 + 1e-4
    # Out-of-range values clamp to the ends of the range.
    assert quantize(torch.tensor([-300.0, 300.0])).tolist() == [0, 255]


def test_model_scaling_roundtrip_is_exact():
    image = torch.arange(256, dtype=torch.uint8)
    x = image_to_model(image)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(model_to_image(x), image)


def test_pseudo_inverse_reproduces_the_mel():
    audio = load_audio(DRUMS, P.sample_rate)[: 5 * P.sample_rate]
    mel = mel_power(audio)
    back = torch.nn.functional.linear(mel_to_linear_power(mel).T, _filterbank().T).T
    db_a, db_b = power_to_db(mel), power_to_db(back)
    assert (db_a - db_b).abs().mean() < 0.5


def _filterbank():
    import torchaudio.functional as AF
    return AF.melscale_fbanks(P.n_fft // 2 + 1, 0.0, P.sample_rate / 2, P.n_mels, P.sample_rate)


@pytest.mark.timeout(120)
def test_roundtrip_of_real_drums_within_2_db(tmp_path, capsys):
    out = tmp_path / "drums_rt.wav"
    assert main(["roundtrip", str(DRUMS), str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["griffin_lim_iterations"] == 32
    assert result["mel_mae_db"] < 2.0
    assert math.isclose(result["seconds"], 8.0, abs_tol=0.01)
    assert result["realtime_factor"] > 0
    rebuilt = load_audio(out, P.sample_rate)
    assert abs(rebuilt.shape[-1] - 8 * P.sample_rate) <= 1


def test_fewer_iterations_cost_quality(tmp_path, capsys):
    errors = {}
    for n in (1, 32):
        main(["roundtrip", str(DRUMS), str(tmp_path / f"{n}.wav"), "--json", "--griffin-lim-iters", str(n)])
        errors[n] = json.loads(capsys.readouterr().out)["mel_mae_db"]
    assert errors[32] < errors[1]


def test_batched_inversion_matches_one_by_one():
    audio = load_audio(DRUMS, P.sample_rate)
    windows, _ = cut_windows(audio_to_image(audio), pad_tail=True)
    assert windows.shape[0] == 2
    batch = image_to_audio(windows[:2], n_iter=4)
    single = torch.stack([image_to_audio(w, n_iter=4) for w in windows[:2]])
    assert batch.shape == (2, P.window_samples)
    assert (batch - single).abs().max() < 5e-3  # float FFT rounding only


def test_db_power_inverse():
    db = torch.tensor([-50.0, 0.0, 10.0])
    assert torch.allclose(10 * torch.log10(db_to_power(db)), db, atol=1e-5)


def test_roundtrip_rejects_bad_iterations(tmp_path, capsys):
    assert main(["roundtrip", str(DRUMS), str(tmp_path / "x.wav"), "--griffin-lim-iters", "0"]) == 2
    assert "--griffin-lim-iters" in capsys.readouterr().err
