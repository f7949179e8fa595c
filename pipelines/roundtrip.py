"""What the representation costs: audio -> mel -> dB -> uint8 -> back to audio."""
from __future__ import annotations

import time

from pipelines.audio import load_audio, save_wav
from pipelines.mel import MelParams, audio_to_image, image_to_audio, mel_mae_db


def roundtrip_file(src: str, dst: str, iterations: int = 32, params: MelParams = MelParams()) -> dict:
    """Write `src` as it sounds after the codec's round trip to `dst` (WAV at the codec's rate).

    Returns the mel-domain error (OUT re-analysed vs IN, mean absolute dB over the
    fixed range), the audio length, and the speed.
    """
    signal = load_audio(src, params.sample_rate)
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
