"""What the representation costs: audio -> mel -> dB -> uint8 -> back to audio."""
from __future__ import annotations

import os
import time

from cluster.errors import UserError
from pipelines.audio import AudioError, load_audio, save_wav
from pipelines.codec_options import GRIFFIN_LIM_ITERS
from pipelines.mel import MelParams, audio_to_image, image_to_audio, mel_mae_db


class RoundtripError(UserError):
    """IN / OUT cannot be used as asked (OUT is IN, a folder, or in a missing folder)."""


def check_paths(src: str, dst: str) -> None:
    """Refuse what would lose data or fail only after the work: OUT == IN, OUT a folder."""
    if not os.path.exists(src):
        raise FileNotFoundError(f"audio file not found: {src}")
    if os.path.isdir(src):
        raise RoundtripError(f"IN {src} is a folder; give an audio file")
    if os.path.exists(dst) and os.path.samefile(src, dst) or \
            os.path.realpath(src) == os.path.realpath(dst):
        raise RoundtripError(f"OUT {dst} is IN: the lossy result would replace the original; "
                             "give another OUT")
    if os.path.isdir(dst):
        raise RoundtripError(f"OUT {dst} is a folder; give a file name, e.g. {os.path.join(dst, 'roundtrip.wav')}")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise RoundtripError(f"OUT's folder {folder} does not exist")


def roundtrip_file(src: str, dst: str, iterations: int = GRIFFIN_LIM_ITERS, params: MelParams = MelParams()) -> dict:
    """Write `src` as it sounds after the codec's round trip to `dst` (WAV at the codec's rate).

    Returns the mel-domain error (OUT re-analysed vs IN, mean absolute dB over the
    fixed range), the audio length, and the speed.
    """
    check_paths(src, dst)
    signal = load_audio(src, params.sample_rate)
    need = params.n_fft // 2 + 1  # the centred first STFT frame reflects n_fft / 2 samples
    if signal.shape[-1] < need:
        raise AudioError(f"{src}: too short ({1000 * signal.shape[-1] / params.sample_rate:.0f} ms; "
                         f"the mel analysis needs at least {1000 * need / params.sample_rate:.0f} ms)")
    started = time.perf_counter()
    image = audio_to_image(signal, params)
    rebuilt = image_to_audio(image, params, n_iter=iterations, length=signal.shape[-1])
    elapsed = time.perf_counter() - started
    save_wav(dst, rebuilt, params.sample_rate)
    reread = load_audio(dst, params.sample_rate, allow_silent=True)
    seconds = signal.shape[-1] / params.sample_rate
    return {
        "input": str(src),
        "output": str(dst),
        "mel_mae_db": round(mel_mae_db(signal, reread, params), 4),
        "db_range": [params.db_min, params.db_max],
        "griffin_lim_iterations": iterations,
        "seconds": round(seconds, 3),
        "wall_seconds": round(elapsed, 3),
        "realtime_factor": round(seconds / elapsed, 2),
    }
