"""Throughput of `cycledrums score`: clips per second, and where the time goes.

Clips are 5.92 s (one window) drum clips of procedural songs with their bass, as a
reference folder (<clip>/drums.wav + bass.wav), and "generated" versions of them
(time-shifted, noisy, leaky or true).  Inception-v3 runs with a randomly initialised
network of the real architecture (the cost does not depend on the weights).

1. baseline: the job's feature code in this process, clip after clip, no Ray
   (decode + mel + STOI-like + rhythm features, then Inception on generated and
   reference images);
2. the Ray Data job (`run_score`), after a warm-up run.
Prints medians of --repeats runs, the ratio to the baseline, the split between the
CPU features and Inception, and an estimate for 14,000 clips on one GPU node.

    .venv/bin/python benchmarks/bench_score.py [--clips 16 --repeats 2]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from pipelines.mel import MelParams

GFLOP_PER_INCEPTION = 5.7  # Inception-v3 forward at 299 x 299


def write_clips(root: Path, n: int, seconds: float) -> tuple[Path, Path]:
    from pipelines.synth import plan_dataset, render_song

    rate = 22050
    ref, gen = root / "reference", root / "generated"
    gen.mkdir(parents=True)
    rng = np.random.default_rng(0)
    i = 0
    for plan in plan_dataset(max(1, (n + 3) // 4), seed=3):
        stems = render_song(plan, seconds * 4 + 1, rate=rate)
        for k in range(4):
            if i == n:
                break
            sl = slice(int(k * seconds * rate), int((k + 1) * seconds * rate))
            drums, bass = stems["drums"][sl], stems["bass"][sl]
            kind = i % 4
            fake = [drums, np.roll(drums, rate // 5), 0.3 * drums + bass,
                    0.3 * rng.standard_normal(len(drums))][kind]
            (ref / f"c{i:04d}").mkdir(parents=True)
            sf.write(ref / f"c{i:04d}" / "drums.wav", drums, rate, subtype="FLOAT")
            sf.write(ref / f"c{i:04d}" / "bass.wav", bass, rate, subtype="FLOAT")
            sf.write(gen / f"c{i:04d}.wav", np.clip(fake, -1, 1), rate, subtype="FLOAT")
            i += 1
    return gen, ref


def baseline(gen: Path, ref: Path, weights: str) -> dict:
    """Features and Inception activations of every clip, in this process, no Ray."""
    from infer.inception import InceptionFeatures, clip_activations, load_state_dict
    from infer.score_stages import clip_features, load_mel_image

    params = MelParams()
    net = InceptionFeatures(load_state_dict(weights))
    start = time.perf_counter()
    images = []
    for path in sorted(gen.glob("*.wav")):
        g = load_mel_image(str(path), params)
        t = load_mel_image(str(ref / path.stem / "drums.wav"), params)
        b = load_mel_image(str(ref / path.stem / "bass.wav"), params)
        clip_features(g, t, b, params)
        images += [g, t]
    features_s = time.perf_counter() - start
    t0 = time.perf_counter()
    clip_activations(net, images, params.window_frames)
    inception_s = time.perf_counter() - t0
    return {"seconds": time.perf_counter() - start, "features": features_s, "inception": inception_s}


def ray_job(gen: Path, ref: Path, out: Path, weights: str, batch_size: int) -> tuple[dict, pd.DataFrame]:
    from infer.score import ScoreConfig, run_score

    summary = run_score(ScoreConfig(generated=[str(gen)], reference=str(ref), output=str(out),
                                    inception_weights=weights, batch_size=batch_size, baselines=False))
    return summary, pd.read_parquet(out / "clips.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=16, help="generated clips (default 16)")
    ap.add_argument("--seconds", type=float, default=MelParams().window_samples / MelParams().sample_rate,
                    help="clip length in seconds (default 5.92: one window)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs, median reported (default 2)")
    ap.add_argument("--batch-size", type=int, default=16, help="score --batch-size (default 16)")
    ap.add_argument("--node-cpus", type=int, default=16, help="CPU cores of the GPU node for the estimate (default 16)")
    ap.add_argument("--gpu-tflops", type=float, default=20.0,
                    help="effective Inception throughput of the node's GPU, TFLOP/s (default 20)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cluster.ray_runtime import init_ray
    from infer.inception import save_random_weights

    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    gen, ref = write_clips(tmp, args.clips, args.seconds)
    weights = save_random_weights(str(tmp / "inception.pth"), seed=0)
    print(f"{args.clips} clips of {args.seconds:.2f} s; baseline with 1 torch thread, Ray tasks 1 CPU each")

    # The baseline runs with one torch thread, like each Ray task / actor here (Ray sets
    # OMP_NUM_THREADS to the task's CPUs): the ratio then shows what the pipelined stages
    # bring, not how torch's intra-op threads fare on a shared machine.
    torch.set_num_threads(1)
    base = [baseline(gen, ref, weights) for _ in range(args.repeats)]
    base_s = statistics.median(b["seconds"] for b in base)
    print(f"baseline (no Ray, in-process): {args.clips / base_s:.2f} clips/s (median {base_s:.1f} s: features "
          f"{statistics.median(b['features'] for b in base):.2f} s, Inception "
          f"{statistics.median(b['inception'] for b in base):.2f} s for {2 * args.clips} images)")

    init_ray()
    ray_job(gen, ref, tmp / "warmup", weights, args.batch_size)
    runs = [ray_job(gen, ref, tmp / f"ray{r}", weights, args.batch_size) for r in range(args.repeats)]
    job_s = statistics.median(s["seconds"]["job"] for s, _ in runs)
    clips = runs[-1][1]
    features_s = float(clips["seconds_features"].median())
    # seconds_inception is per row: generated rows and reference rows each cost one image.
    inception_s = float(clips["seconds_inception"].median())
    print(f"Ray Data job: {args.clips / job_s:.2f} clips/s (median {job_s:.1f} s), "
          f"{args.clips / job_s / (args.clips / base_s):.2f}x the baseline")
    print(f"in the Ray job, per clip, median seconds: features (decode + mel + STOI-like + rhythm) {features_s:.3f}, "
          f"Inception {2 * inception_s:.3f} (generated + reference image, one CPU thread)")

    # Per-core CPU cost from the baseline (one thread, no contention between our own stages).
    n = 14000
    features_core = statistics.median(b["features"] for b in base) / args.clips
    cpu_time = n * features_core / max(1, args.node_cpus - 1)
    gpu_time = n * 2 * GFLOP_PER_INCEPTION / (args.gpu_tflops * 1e3)
    print(f"estimate, {n} clips on one node with 1 GPU ({args.gpu_tflops:g} TFLOP/s effective) and "
          f"{args.node_cpus} cores: features {features_core:.3f} s/clip/core -> {cpu_time / 60:.1f} min, "
          f"Inception {gpu_time / 60:.1f} min -> about {max(cpu_time, gpu_time) / 60:.1f} min, plus the "
          f"Gaussians/grader on the driver (seconds)")

if __name__ == "__main__":
    main()
