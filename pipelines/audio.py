"""Audio I/O: decode anything soundfile reads into mono float tensors, and write WAV.

Every failure a user can cause with a bad file raises a subclass of `AudioError`
(or `FileNotFoundError` for a missing path), with the path and a plain reason, so
batch jobs can turn it into an error row and carry on.
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]

# A signal whose peak stays below this is treated as silence (-100 dBFS).
SILENCE_PEAK = 1e-5


class AudioError(ValueError):
    """Base class for every 'this input is not usable audio' error."""


class NotAudioError(AudioError):
    """The bytes are not in any format soundfile can decode."""


class EmptyAudioError(AudioError):
    """The file is empty or decodes to zero samples."""


class SilentAudioError(AudioError):
    """The signal decodes but carries no sound (all samples below SILENCE_PEAK)."""


def _describe(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", "<in-memory audio>")


def read_audio(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode `source` (path, bytes or file object) to (float32 array [frames, channels], rate)."""
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"audio file not found: {name}")
        if os.path.getsize(source) == 0:
            raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise EmptyAudioError(f"{name}: no bytes to decode")
        source = io.BytesIO(source)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:  # also raised for unknown formats
        raise NotAudioError(f"{name}: not a readable audio file ({err})") from err
    except RuntimeError as err:  # older soundfile versions
        raise NotAudioError(f"{name}: not a readable audio file ({err})") from err
    if data.shape[0] == 0:
        raise EmptyAudioError(f"{name}: decodes to zero samples")
    return data, rate


def to_mono_resampled(data: np.ndarray, rate: int, target_rate: int) -> torch.Tensor:
    """[frames, channels] float array -> mono float32 tensor [samples] at `target_rate`."""
    # A matrix-vector product is several times faster than data.mean(axis=1) on [n, 2].
    weights = np.full(data.shape[1], 1.0 / data.shape[1], dtype=np.float32)
    mono = torch.from_numpy(np.ascontiguousarray(data @ weights))
    if rate != target_rate:
        mono = AF.resample(mono, rate, target_rate)
    return mono


def check_not_silent(signal: torch.Tensor, name: str = "signal") -> None:
    if signal.numel() == 0:
        raise EmptyAudioError(f"{name}: zero-length signal")
    peak = float(signal.abs().max())
    if peak < SILENCE_PEAK:
        raise SilentAudioError(f"{name}: signal is silent (peak {peak:.2e} < {SILENCE_PEAK:.0e})")


def load_audio(source: AudioSource, sample_rate: int, allow_silent: bool = False) -> torch.Tensor:
    """Load any audio soundfile reads (WAV, FLAC, OGG, MP3) as mono float32 at `sample_rate`."""
    data, rate = read_audio(source)
    signal = to_mono_resampled(data, rate, sample_rate)
    if not allow_silent:
        check_not_silent(signal, _describe(source))
    return signal


def save_wav(path: str | os.PathLike | BinaryIO, signal: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write mono or [channels, samples] audio as 16-bit PCM WAV, clipping to [-1, 1]."""
    arr = signal.detach().cpu().numpy() if isinstance(signal, torch.Tensor) else np.asarray(signal)
    arr = np.clip(arr.astype(np.float32), -1.0, 1.0)
    if arr.ndim == 2:  # [channels, samples] -> soundfile's [samples, channels]
        arr = arr.T
    sf.write(path, arr, sample_rate, subtype="PCM_16", format="WAV")
