"""Codec benchmark: round-trip quality on real drums, and speed of the way back.

Way back = uint8 mel image -> linear magnitude -> 32 Griffin-Lim iterations.
Ours: pseudo-inverse of the filter bank computed once + torchaudio GriffinLim.
Baseline: torchaudio's own InverseMelScale (least squares per call) + GriffinLim.
Both on the same batch of windows in the same run; medians of --repeats runs.

    .venv/bin/python benchmarks/bench_codec.py [--windows 8] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchaudio.transforms as T

from pipelines.audio import load_audio
from pipelines.codec_options import GRIFFIN_LIM_ITERS
from pipelines.mel import (MelParams, audio_to_image, db_to_power, dequantize,
                           image_to_audio, mel_mae_db, mel_to_linear_power)
from pipelines.windowing import cut_windows

ROOT = Path(__file__).resolve().parents[1]
DRUMS = ROOT / "tests/data/lithium_drums_8s.flac"  # real drums shipped with the repository (CC0)


def median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time of each function; runs are interleaved so that a change in
    machine load during the benchmark hits both sides alike."""
    for fn in fns.values():
        fn()  # warm-up: caches, allocator, thread pool
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def torchaudio_way_back(images: torch.Tensor, p: MelParams, n_iter: int) -> torch.Tensor:
    inverse = T.InverseMelScale(n_stft=p.n_fft // 2 + 1, n_mels=p.n_mels, sample_rate=p.sample_rate,
                                driver="gelsd")  # the default driver fails on this filter bank
    gl = T.GriffinLim(n_fft=p.n_fft, hop_length=p.hop_length, n_iter=n_iter, momentum=0.99,
                      power=1.0, rand_init=False)
    return gl(inverse(db_to_power(dequantize(images, p))).sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8, help="windows per batch (default 8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    ap.add_argument("--griffin-lim-iters", dest="iterations", type=int, default=GRIFFIN_LIM_ITERS,
                    help=f"Griffin-Lim iterations (default {GRIFFIN_LIM_ITERS})")
    ap.add_argument("--input", type=Path, default=DRUMS,
                    help="drum audio to round-trip (default: the repository's 8 s Lithium drums)")
    args = ap.parse_args()
    p = MelParams()
    source = args.input
    audio = load_audio(source, p.sample_rate)
    print(f"machine: {torch.get_num_threads()} torch threads; input {source.name}, {audio.shape[-1] / p.sample_rate:.1f} s")

    image = audio_to_image(audio, p)
    rebuilt = image_to_audio(image, p, n_iter=args.iterations, length=audio.shape[-1])
    print(f"round trip, whole file, {args.iterations} iterations: mel MAE {mel_mae_db(audio, rebuilt, p):.3f} dB "
          f"over [{p.db_min}, {p.db_max}] dB")

    windows, _ = cut_windows(image, p, pad_tail=True)
    batch = windows.repeat((args.windows + len(windows) - 1) // len(windows), 1, 1)[: args.windows]
    audio_seconds = len(batch) * p.window_samples / p.sample_rate
    t = median_seconds({"ours": lambda: image_to_audio(batch, p, n_iter=args.iterations),
                        "base": lambda: torchaudio_way_back(batch, p, args.iterations)}, args.repeats)
    ours, base = t["ours"], t["base"]
    print(f"way back on {len(batch)} windows ({audio_seconds:.1f} s of audio), median of runs:")
    print(f"  pseudo-inverse + GriffinLim      {ours:8.3f} s  {audio_seconds / ours:8.1f}x real time")
    print(f"  InverseMelScale + GriffinLim     {base:8.3f} s  {audio_seconds / base:8.1f}x real time")
    print(f"  speed-up: {base / ours:.2f}x")

    # The mel -> linear step alone, where the two differ.
    mel = db_to_power(dequantize(batch, p))
    inverse = T.InverseMelScale(n_stft=p.n_fft // 2 + 1, n_mels=p.n_mels, sample_rate=p.sample_rate,
                                driver="gelsd")
    t = median_seconds({"pinv": lambda: mel_to_linear_power(mel, p), "lstsq": lambda: inverse(mel)}, args.repeats)
    pinv_s, lstsq_s = t["pinv"], t["lstsq"]
    print(f"mel -> linear only: pseudo-inverse {pinv_s * 1e3:.1f} ms, InverseMelScale(gelsd) "
          f"{lstsq_s * 1e3:.1f} ms ({lstsq_s / pinv_s:.1f}x)")
    try:
        T.InverseMelScale(n_stft=p.n_fft // 2 + 1, n_mels=p.n_mels, sample_rate=p.sample_rate)(mel[:1])
        print("InverseMelScale with its default driver: ran")
    except Exception as err:  # the default driver needs a full-rank system
        print(f"InverseMelScale with its default driver fails: {type(err).__name__}: {str(err)[:100]}")


if __name__ == "__main__":
    main()
