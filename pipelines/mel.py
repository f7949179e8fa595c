"""The mel codec: audio <-> the 256x256 uint8 mel images the models see.

Forward:  audio -> mel power spectrogram (torchaudio) -> dB -> clamp to one fixed
          range -> uint8 (cut into 256-frame windows by pipelines/windowing.py).
Backward: uint8 -> dB -> mel power -> linear power through a pseudo-inverse of the
          mel filter bank (computed once per device) -> magnitude -> Griffin-Lim.

Everything works on batches (any leading dims) and on whatever device the input
tensors live on.  All parameters live in `MelParams`; they are written into every
Parquet file and checkpoint so an image can always be turned back into sound.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from pipelines.codec_options import GRIFFIN_LIM_ITERS

CODEC_VERSION = 1


@dataclass(frozen=True)
class MelParams:
    """The paper's representation.  The dB range is fixed for the whole data set.

    db_min / db_max: 10*log10 of the mel *power* of audio in [-1, 1].  A full-scale
    drum hit reaches about +45 dB in its loudest bin with these STFT settings;
    -50 dB is far below anything audible in a mix, and everything below is
    clamped to it (silence).  One uint8 step is (db_max - db_min) / 255 ~ 0.41 dB.
    """

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 256
    window_frames: int = 256
    overlap_frames: int = 50
    db_min: float = -50.0
    db_max: float = 55.0
    codec_version: int = CODEC_VERSION

    @property
    def stride_frames(self) -> int:
        return self.window_frames - self.overlap_frames

    @property
    def db_step(self) -> float:
        return (self.db_max - self.db_min) / 255.0

    @property
    def window_samples(self) -> int:
        """Audio samples spanned by one window (istft length with centred frames)."""
        return (self.window_frames - 1) * self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "MelParams":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown mel parameters {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str | bytes) -> "MelParams":
        return cls.from_dict(json.loads(s))


# ---------------------------------------------------------------- forward


@functools.lru_cache(maxsize=8)
def _mel_basis(params: MelParams, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hann window, [n_mels, n_freqs] filter bank): exactly torchaudio.transforms.MelSpectrogram's."""
    window = torch.hann_window(params.n_fft, device=device)
    fb = AF.melscale_fbanks(
        n_freqs=params.n_fft // 2 + 1,
        f_min=0.0,
        f_max=params.sample_rate / 2.0,
        n_mels=params.n_mels,
        sample_rate=params.sample_rate,
    )
    return window, fb.T.contiguous().to(device)


def num_frames(num_samples: int, params: MelParams = MelParams()) -> int:
    """Frames torchaudio produces for `num_samples` (centred frames)."""
    return 1 + num_samples // params.hop_length


def mel_power(audio: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    """[..., samples] float audio -> [..., n_mels, frames] mel power spectrogram.

    The same numbers as torchaudio.transforms.MelSpectrogram (tests compare them),
    built from torchaudio's own spectrogram and filter bank, with one change for
    speed: the power is re^2 + im^2 of the complex STFT instead of |z| ** 2, which
    skips a square root per bin and was 40% of the whole transform on CPU.
    """
    window, fb = _mel_basis(params, str(audio.device))
    spec = AF.spectrogram(audio, pad=0, window=window, n_fft=params.n_fft, hop_length=params.hop_length,
                          win_length=params.n_fft, power=None, normalized=False)
    parts = torch.view_as_real(spec).square()
    return torch.matmul(fb, parts[..., 0] + parts[..., 1])


def power_to_db(power: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    """Mel power -> dB, clamped to the fixed range."""
    db = 10.0 * torch.log10(power.clamp_min(1e-10))
    return db.clamp(params.db_min, params.db_max)


def db_to_power(db: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, db / 10.0)


def quantize(db: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    """dB in the fixed range -> uint8 (0 = db_min, 255 = db_max); error <= half a step."""
    scaled = (db.clamp(params.db_min, params.db_max) - params.db_min) / params.db_step
    return scaled.round().to(torch.uint8)


def dequantize(image: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    return params.db_min + image.float() * params.db_step


def audio_to_image(audio: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    """[..., samples] audio -> [..., n_mels, frames] uint8 mel image (bin 0 = lowest)."""
    return quantize(power_to_db(mel_power(audio, params), params), params)


def image_to_model(image: torch.Tensor) -> torch.Tensor:
    """uint8 image -> float in [-1, 1], what the networks see."""
    return image.float() / 127.5 - 1.0


def model_to_image(x: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> uint8 image."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------- backward


@functools.lru_cache(maxsize=8)
def _mel_pinv(params: MelParams, device: str) -> torch.Tensor:
    """[n_freqs, n_mels] pseudo-inverse of the mel filter bank, computed once per device."""
    _, fb = _mel_basis(params, "cpu")  # [n_mels, n_freqs]; mel = fb @ spec
    return torch.linalg.pinv(fb.double()).float().to(device)


def mel_to_linear_power(mel: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    """[..., n_mels, frames] mel power -> [..., n_freqs, frames] STFT power (>= 0)."""
    pinv = _mel_pinv(params, str(mel.device))
    return torch.matmul(pinv, mel).clamp_min(0.0)


@functools.lru_cache(maxsize=8)
def _griffin_lim(params: MelParams, n_iter: int, momentum: float, device: str) -> T.GriffinLim:
    return T.GriffinLim(
        n_fft=params.n_fft,
        win_length=params.n_fft,
        hop_length=params.hop_length,
        n_iter=n_iter,
        momentum=momentum,
        power=1.0,  # we pass magnitudes
        rand_init=False,  # deterministic output for a given image
    ).to(device)


def griffin_lim(magnitude: torch.Tensor, params: MelParams = MelParams(), n_iter: int = GRIFFIN_LIM_ITERS,
                momentum: float = 0.99, length: int | None = None) -> torch.Tensor:
    """[..., n_freqs, frames] magnitude -> [..., samples] audio via torchaudio Griffin-Lim."""
    if n_iter < 1:
        raise ValueError(f"Griffin-Lim needs at least 1 iteration, got {n_iter}")
    gl = _griffin_lim(params, n_iter, momentum, str(magnitude.device))
    gl.length = length
    return gl(magnitude)


def image_to_audio(image: torch.Tensor, params: MelParams = MelParams(), n_iter: int = GRIFFIN_LIM_ITERS,
                   length: int | None = None) -> torch.Tensor:
    """[..., n_mels, frames] uint8 image -> [..., samples] audio."""
    power = mel_to_linear_power(db_to_power(dequantize(image, params)), params)
    return griffin_lim(power.sqrt(), params, n_iter=n_iter, length=length)


def mel_mae_db(reference: torch.Tensor, other: torch.Tensor, params: MelParams = MelParams()) -> float:
    """Mean absolute difference in dB between two signals' mels over the fixed range."""
    n = min(reference.shape[-1], other.shape[-1])
    a = power_to_db(mel_power(reference[..., :n], params), params)
    b = power_to_db(mel_power(other[..., :n], params), params)
    return float((a - b).abs().mean())
