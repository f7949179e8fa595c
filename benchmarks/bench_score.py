"""Throughput of `cycledrums score`: clips per second, and where the time goes.

Clips are 5.92 s (one window) drum clips of procedural songs with their bass, as a
reference folder (<clip>/drums.wav + bass.wav), and "generated" versions of them
(time-shifted, noisy, leaky or true).  Inception-v3 runs with a randomly initialised
network of the real architecture (the cost does not depend on the weights).

1. the one-thread loop: the job's feature code in this process, clip after clip, no
   Ray, torch on one thread (decode + mel + STOI-like + rhythm features, then Inception
   on generated and reference images);
2. the Ray Data job (`run_score`) on a local Ray with every core, after a warm-up run
   (Ray's start is not counted; each job's actor start, imports and Inception load are).
Both on --clips clips and on --growth times as many.  Prints medians of --repeats runs,
the ratio to the loop, the per-clip cost of each stage in the loop and in the Ray job
side by side, peak memory of the driver and the Ray workers, and an estimate for
14,000 clips on one GPU node.

    .venv/bin/python benchmarks/bench_score.py [--clips 160 --growth 4 --repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from memory import PeakMemory, print_growth
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


def ray_job(gen: Path, ref: Path, out: Path, weights: str, batch_size: int) -> dict:
    from infer.score import ScoreConfig, run_score

    start = time.perf_counter()
    with PeakMemory() as peak:
        summary = run_score(ScoreConfig(generated=[str(gen)], reference=str(ref), output=str(out),
                                        inception_weights=weights, inception_batch=batch_size, baselines=False))
    clips = pd.read_parquet(out / "clips.parquet")
    return {"seconds": summary["seconds"]["job"], "wall": time.perf_counter() - start, "clips": clips,
            "summary": summary, "peak": peak}


def measure(tmp: Path, n_clips: int, weights: str, args) -> dict:
    gen, ref = write_clips(tmp / f"clips{n_clips}", n_clips, args.seconds)
    torch.set_num_threads(1)
    base = [baseline(gen, ref, weights) for _ in range(args.repeats)]
    runs = [ray_job(gen, ref, tmp / f"ray{n_clips}-{r}", weights, args.batch_size) for r in range(args.repeats)]
    base_s = statistics.median(b["seconds"] for b in base)
    job_s = statistics.median(r["seconds"] for r in runs)
    clips = runs[-1]["clips"]
    # seconds_inception is per row: a generated row and its reference row each cost one image.
    return {"clips": n_clips, "base_s": base_s, "job_s": job_s, "base_rate": n_clips / base_s,
            "job_rate": n_clips / job_s, "wall": statistics.median(r["wall"] for r in runs),
            "base_stages": {"features": statistics.median(b["features"] for b in base) / n_clips,
                            "inception": statistics.median(b["inception"] for b in base) / n_clips},
            "job_stages": {"features": float(clips["seconds_features"].median()),
                           "inception": 2 * float(clips["seconds_inception"].median())},
            "resources": runs[-1]["summary"].get("resources", {}),
            "peak": max((r["peak"] for r in runs), key=lambda p: p.workers_total_mb)}


def report(m: dict) -> None:
    print(f"\n{m['clips']} clips: one-thread loop {m['base_rate']:.2f} clips/s (median {m['base_s']:.1f} s), "
          f"Ray job {m['job_rate']:.2f} clips/s (median {m['job_s']:.1f} s; {m['wall']:.1f} s with the summary, "
          f"tables, plots and report) = {m['job_rate'] / m['base_rate']:.2f}x the loop")
    print("  per clip, median seconds    features  Inception (generated + reference image)")
    for name, stages in (("in-process loop", m["base_stages"]), ("in the Ray job", m["job_stages"])):
        print(f"    {name:24s} {stages['features']:9.3f}  {stages['inception']:9.3f}")
    print("    Ray / loop               " + "  ".join(
        f"{m['job_stages'][k] / max(1e-9, m['base_stages'][k]):8.2f}x" for k in ("features", "inception")))
    print(f"  {m['peak'].describe()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=160,
                    help="generated clips at 1x (default 160: the actors' start, 6-8 s, is then under a "
                         "fifth of the job)")
    ap.add_argument("--growth", type=int, default=4, help="also run at this many times the clips; 1 = off (default 4)")
    ap.add_argument("--seconds", type=float, default=MelParams().window_samples / MelParams().sample_rate,
                    help="clip length in seconds (default 5.92: one window)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default 3)")
    ap.add_argument("--inception-batch", dest="batch_size", type=int, default=16, help="score --inception-batch (default 16)")
    ap.add_argument("--node-cpus", type=int, default=16, help="CPU cores of the GPU node for the estimate (default 16)")
    ap.add_argument("--gpu-tflops", type=float, default=20.0,
                    help="effective Inception throughput of the node's GPU, TFLOP/s (default 20)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cluster.ray_runtime import init_ray
    from infer.inception import save_random_weights

    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    weights = save_random_weights(str(tmp / "inception.pth"), seed=0)
    print(f"clips of {args.seconds:.2f} s; the loop runs with 1 torch thread; medians of {args.repeats} runs")
    init_ray()
    warm_gen, warm_ref = write_clips(tmp / "warm", 2, args.seconds)
    ray_job(warm_gen, warm_ref, tmp / "warmup", weights, args.batch_size)  # Ray's start is not counted
    scales = [args.clips] + ([args.clips * args.growth] if args.growth > 1 else [])
    results = [measure(tmp, n, weights, args) for n in scales]
    for m in results:
        report(m)
    if len(results) == 2:
        print_growth(*results, args.growth)
    estimate(results[0], args)
    shutil.rmtree(tmp, ignore_errors=True)


def estimate(m: dict, args) -> None:
    """14,000 clips on one GPU node: features on the CPUs, Inception on the GPU."""
    n = 14000
    features_core = m["base_stages"]["features"]
    cpu_time = n * features_core / max(1, args.node_cpus - 1)
    gpu_time = n * 2 * GFLOP_PER_INCEPTION / (args.gpu_tflops * 1e3)
    print(f"estimate, {n} clips on one node with 1 GPU ({args.gpu_tflops:g} TFLOP/s effective) and "
          f"{args.node_cpus} cores: features {features_core:.3f} s/clip/core -> {cpu_time / 60:.1f} min, "
          f"Inception {gpu_time / 60:.1f} min -> about {max(cpu_time, gpu_time) / 60:.1f} min, plus the "
          f"Gaussians/grader on the driver (seconds)")


if __name__ == "__main__":
    main()
