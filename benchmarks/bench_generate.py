"""End-to-end throughput of `cycledrums generate` with the FULL-SIZE generator.

Clips are 5.92 s bass lines (one 256-frame window each, like the paper's 5 s test
clips), 44.1 kHz stereo WAV files of procedural songs.  A freshly initialised
full-size CycleGAN checkpoint (resnet_9blocks, ngf 64: 11.4 M parameters) is used;
the cost does not depend on the weights' values.

1. the one-thread loop: the job's own stage functions called in this process, one clip
   after the other, no Ray, torch on one thread (decode -> generator + Griffin-Lim ->
   mix + write);
2. the Ray Data job (`run_generate`) on a local Ray with every core, after one warm-up
   job so Ray's start is not counted.  Each job starts its own actors (new processes:
   their torch import and model load are counted, as a user's job pays them).
Both run on --clips clips and again on --growth times as many; the two sizes also give
the job's fixed start and its rate once the actors are up.  Prints medians of
--repeats runs, the ratio to the loop, the per-clip cost of each stage in the loop and
in the Ray job side by side, the peak memory of the driver and of the Ray workers, and
an estimate for 14,000 clips on one GPU node.

    .venv/bin/python benchmarks/bench_generate.py [--clips 48 --growth 4 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
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

GFLOP_PER_WINDOW = 97.0  # full-size generator, one 256x256 window (DESIGN.md)
STAGES = ("decode", "generate", "stitch", "invert", "mix_write")


def write_checkpoint(folder: Path, model: str) -> str:
    from train.checkpoint import write_checkpoint as write
    from train.config import TrainConfig
    from train.models import build_networks, count_parameters

    config = TrainConfig(model=model).to_dict()
    config["mel_params"] = MelParams().to_dict()
    torch.manual_seed(0)
    nets = build_networks(config)
    print(f"{model} generator: {count_parameters(nets['gen_bass_to_drums']):,} parameters")
    write(str(folder), {k: v.state_dict() for k, v in nets.items()}, {"step": 0}, config, step=0, epoch=0)
    return str(folder)


def write_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    from pipelines.synth import plan_dataset, render_song

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, plan in enumerate(plan_dataset(max(1, (n + 3) // 4), seed=1)):
        bass = render_song(plan, seconds * 4 + 1, rate=44100)["bass"]
        bass = 0.8 * bass / max(1e-9, np.abs(bass).max())
        for k in range(4):
            if len(paths) == n:
                break
            clip = bass[int(k * seconds * 44100): int((k + 1) * seconds * 44100)]
            path = folder / f"clip{i:03d}-{k}.wav"
            sf.write(path, np.stack([clip, clip], axis=1), 44100, subtype="PCM_16")
            paths.append(path)
    return paths


def baseline(checkpoint: str, clips: list[Path], out: Path, batch_size: int, iters: int) -> dict:
    """The job's stage functions, in this process, one clip at a time (the generator also
    inverts, as in the job, so the per-stage split is the same as the manifest's)."""
    from infer.generate_actor import GeneratorActor
    from infer.generate_decode import decode_batch
    from infer.generate_render import render_batch

    params = MelParams()
    actor = GeneratorActor(checkpoint, "cpu", batch_size, 0.0, 0, n_iter=iters)
    rows = []
    start = time.perf_counter()
    for i, path in enumerate(clips):
        batch = decode_batch({"clip_id": np.array([f"c{i}"], dtype=object),
                              "uri": np.array([str(path)], dtype=object)}, params.to_dict(), None)
        result = render_batch(actor(batch), params.to_dict(), str(out), None, 0.0, "model", None)
        rows += [json.loads(r) for r in result["result"]]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": pd.DataFrame(rows)}


def ray_job(checkpoint: str, clips_dir: Path, out: Path, batch_size: int, iters: int) -> dict:
    from infer.generate import GenerateConfig, run_generate

    with PeakMemory() as peak:
        summary = run_generate(GenerateConfig(checkpoint=checkpoint, inputs=[str(clips_dir)], output=str(out),
                                              generator_batch=batch_size, griffin_lim_iters=iters))
    return {"seconds": summary["seconds"]["job"], "rows": pd.read_parquet(out / "manifest.parquet"),
            "summary": summary, "peak": peak}


def per_clip(rows: pd.DataFrame) -> dict:
    return {stage: float(rows[f"seconds_{stage}"].median()) for stage in STAGES}


def measure(tmp: Path, checkpoint: str, n_clips: int, args) -> dict:
    """Baseline and Ray job on the same n_clips clips, --repeats times each."""
    clips_dir = tmp / f"clips{n_clips}"
    clips = write_clips(clips_dir, n_clips, args.seconds)
    torch.set_num_threads(1)
    base = [baseline(checkpoint, clips, tmp / f"base{n_clips}-{r}", args.batch_size, args.griffin_lim_iters)
            for r in range(args.repeats)]
    runs = [ray_job(checkpoint, clips_dir, tmp / f"ray{n_clips}-{r}", args.batch_size, args.griffin_lim_iters)
            for r in range(args.repeats)]
    base_s = statistics.median(b["seconds"] for b in base)
    job_s = statistics.median(r["seconds"] for r in runs)
    return {"clips": n_clips, "base_s": base_s, "job_s": job_s, "base_rate": n_clips / base_s,
            "job_rate": n_clips / job_s, "base_stages": per_clip(base[-1]["rows"]),
            "job_stages": per_clip(runs[-1]["rows"]), "summary": runs[-1]["summary"],
            "peak": max((r["peak"] for r in runs), key=lambda p: p.workers_total_mb),
            "windows": float(runs[-1]["rows"]["windows"].mean())}


def report(m: dict) -> None:
    print(f"\n{m['clips']} clips: one-thread loop {m['base_rate']:.3f} clips/s (median {m['base_s']:.1f} s), "
          f"Ray job {m['job_rate']:.3f} clips/s (median {m['job_s']:.1f} s) = "
          f"{m['job_rate'] / m['base_rate']:.2f}x the loop")
    print(f"  {m['summary']['generator_actors']} generator actor(s) on {m['summary']['device']}, "
          f"inversion in the {m['summary']['inversion']}")
    print("  per clip, median seconds   " + "  ".join(f"{s:>9s}" for s in STAGES))
    print("    in-process loop          " + "  ".join(f"{m['base_stages'][s]:9.3f}" for s in STAGES))
    print("    in the Ray job           " + "  ".join(f"{m['job_stages'][s]:9.3f}" for s in STAGES))
    print("    Ray / loop               " + "  ".join(
        f"{m['job_stages'][s] / max(1e-9, m['base_stages'][s]):8.2f}x" for s in STAGES))
    print(f"  {m['peak'].describe()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=48,
                    help="clips per run at 1x (default 48: the actors' start, about 6 s, is then "
                         "under a sixth of the job)")
    ap.add_argument("--growth", type=int, default=4, help="also run at this many times the clips; 1 = off (default 4)")
    ap.add_argument("--seconds", type=float, default=MelParams().window_samples / MelParams().sample_rate,
                    help="clip length in seconds (default 5.92: one window)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each, median reported (default 3)")
    ap.add_argument("--generator-batch", dest="batch_size", type=int, default=4, help="generate --generator-batch (default 4)")
    ap.add_argument("--griffin-lim-iters", type=int, default=32, help="Griffin-Lim iterations (default 32)")
    ap.add_argument("--model", default="cyclegan", choices=("cyclegan", "pix2pix"), help="(default cyclegan)")
    ap.add_argument("--node-cpus", type=int, default=16, help="CPU cores of the GPU node for the estimate (default 16)")
    ap.add_argument("--gpu-tflops", type=float, default=20.0,
                    help="effective generator throughput of the node's GPU, TFLOP/s, for the estimate "
                         "(default 20: fp32/TF32 convolutions on an A10G-class GPU)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cluster.ray_runtime import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    checkpoint = write_checkpoint(tmp / "checkpoint", args.model)
    print(f"clips of {args.seconds:.2f} s; the loop runs with 1 torch thread; medians of {args.repeats} runs")
    init_ray()
    warm = write_clips(tmp / "warm", 2, args.seconds)  # Ray's start is not counted
    ray_job(checkpoint, warm[0].parent, tmp / "warmup", args.batch_size, args.griffin_lim_iters)
    scales = [args.clips] + ([args.clips * args.growth] if args.growth > 1 else [])
    results = [measure(tmp, checkpoint, n, args) for n in scales]
    for m in results:
        report(m)
    if len(results) == 2:
        print_growth(*results, args.growth)
    estimate(results[0], args)
    shutil.rmtree(tmp, ignore_errors=True)


def estimate(m: dict, args) -> None:
    """14,000 clips on one GPU node: generator and inversion on the GPU, decode and write on
    the CPUs, pipelined by Ray Data, so the slower side sets the pace."""
    gen_per_window = m["base_stages"]["generate"] / m["windows"]
    print(f"generator on this CPU (one thread): {gen_per_window:.2f} s/window = "
          f"{GFLOP_PER_WINDOW / gen_per_window:.0f} GFLOP/s")
    n = 14000
    cpu_s = m["base_stages"]["decode"] + m["base_stages"]["mix_write"]
    cpu_time = n * cpu_s / max(1, args.node_cpus - 1)  # one core goes to the generator actor
    gpu_time = n * m["windows"] * GFLOP_PER_WINDOW / (args.gpu_tflops * 1e3)
    print(f"estimate, {n} clips on one node with 1 GPU ({args.gpu_tflops:g} TFLOP/s effective) and "
          f"{args.node_cpus} cores: CPU stages {cpu_s:.2f} s/clip/core -> {cpu_time / 60:.1f} min, generator "
          f"{gpu_time / 60:.1f} min (+ Griffin-Lim on the GPU, benchmarks/gpu_check.py) -> about "
          f"{max(cpu_time, gpu_time) / 60:.1f} min ({'CPU' if cpu_time > gpu_time else 'GPU'}-bound)")


if __name__ == "__main__":
    main()
