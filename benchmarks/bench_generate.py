"""End-to-end throughput of `cycledrums generate` with the FULL-SIZE generator.

Clips are 5.92 s bass lines (one 256-frame window each, like the paper's 5 s test
clips), 44.1 kHz stereo WAV files of procedural songs.  A freshly initialised
full-size CycleGAN checkpoint (resnet_9blocks, ngf 64: 11.4 M parameters) is used;
the cost does not depend on the weights' values.

1. baseline: the job's own stage functions called in this process, one clip after
   the other, no Ray (decode -> generator -> stitch + Griffin-Lim + mix + write);
2. the Ray Data job (`run_generate`) on a local Ray, after one warm-up job so Ray's
   start and the actors' imports are not counted.
Prints medians of --repeats runs, the ratio to the baseline, the time split per
stage (from the manifest), and an estimate for 14,000 clips on one GPU node.

    .venv/bin/python benchmarks/bench_generate.py [--clips 6 --repeats 2]
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
    """The job's stage functions, in this process, one clip at a time."""
    from infer.generate import GeneratorActor, decode_batch, render_batch

    params = MelParams()
    actor = GeneratorActor(checkpoint, "cpu", batch_size, 0.0, 0)
    split = dict.fromkeys(("decode", "generate", "render"), 0.0)
    start = time.perf_counter()
    for i, path in enumerate(clips):
        t = time.perf_counter()
        batch = decode_batch({"clip_id": np.array([f"c{i}"], dtype=object),
                              "uri": np.array([str(path)], dtype=object)}, params.to_dict(), None)
        split["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        batch = actor(batch)
        split["generate"] += time.perf_counter() - t
        t = time.perf_counter()
        render_batch(batch, params.to_dict(), str(out), iters, None, 0.0, None)
        split["render"] += time.perf_counter() - t
    return {"seconds": time.perf_counter() - start, **split}


def ray_job(checkpoint: str, clips_dir: Path, out: Path, batch_size: int, iters: int) -> tuple[dict, pd.DataFrame]:
    from infer.generate import GenerateConfig, run_generate

    summary = run_generate(GenerateConfig(checkpoint=checkpoint, inputs=[str(clips_dir)], output=str(out),
                                          batch_size=batch_size, griffin_lim_iters=iters))
    return summary, pd.read_parquet(out / "manifest.parquet")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=6, help="clips per run (default 6)")
    ap.add_argument("--seconds", type=float, default=MelParams().window_samples / MelParams().sample_rate,
                    help="clip length in seconds (default 5.92: one window)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each, median reported (default 2)")
    ap.add_argument("--batch-size", type=int, default=4, help="generate --batch-size (default 4)")
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
    clips = write_clips(tmp / "clips", args.clips, args.seconds)
    print(f"{len(clips)} clips of {args.seconds:.2f} s; baseline with 1 torch thread, Ray tasks 1 CPU each")

    # The baseline runs with one torch thread, like each Ray task / actor here (Ray sets
    # OMP_NUM_THREADS to the task's CPUs): the ratio then shows what the pipelined stages
    # bring, not how torch's intra-op threads fare on a shared machine.
    torch.set_num_threads(1)
    base = [baseline(checkpoint, clips, tmp / f"base{r}", args.batch_size, args.griffin_lim_iters)
            for r in range(args.repeats)]
    base_s = statistics.median(b["seconds"] for b in base)
    print(f"baseline (no Ray, in-process): {len(clips) / base_s:.3f} clips/s "
          f"(median {base_s:.1f} s; decode {statistics.median(b['decode'] for b in base):.2f} s, "
          f"generate {statistics.median(b['generate'] for b in base):.2f} s, "
          f"render {statistics.median(b['render'] for b in base):.2f} s)")

    init_ray()
    ray_job(checkpoint, tmp / "clips", tmp / "warmup", args.batch_size, args.griffin_lim_iters)
    runs = [ray_job(checkpoint, tmp / "clips", tmp / f"ray{r}", args.batch_size, args.griffin_lim_iters)
            for r in range(args.repeats)]
    job_s = statistics.median(s["seconds"]["job"] for s, _ in runs)
    manifest = runs[-1][1]
    per_clip = {stage: float(manifest[f"seconds_{stage}"].median()) for stage in STAGES}
    print(f"Ray Data job: {len(clips) / job_s:.3f} clips/s (median {job_s:.1f} s), "
          f"{len(clips) / job_s / (len(clips) / base_s):.2f}x the baseline")
    total = sum(per_clip.values())
    print("in the Ray job, per clip, median seconds by stage: " + ", ".join(
        f"{stage} {per_clip[stage]:.3f} ({100 * per_clip[stage] / total:.0f}%)" for stage in STAGES))
    print(f"inversion (Griffin-Lim, {args.griffin_lim_iters} iterations) ran in the "
          f"{runs[-1][0]['inversion']}: {per_clip['invert']:.3f} s per clip (median); on a GPU node it runs "
          "in the generator actor (benchmarks/gpu_check.py measures it there)")
    windows = float(manifest["windows"].mean())
    gen_per_window = per_clip["generate"] / windows
    print(f"generator on this CPU: {gen_per_window:.2f} s/window = {GFLOP_PER_WINDOW / gen_per_window:.0f} GFLOP/s")

    # 14,000 clips on one GPU node: generator on the GPU, every other stage on the CPUs
    # (one core per task), the two pipelined by Ray Data, so the slower side sets the pace.
    # Per-core CPU cost from the baseline (one thread, nothing else of ours running): the
    # Ray job's own stage times also carry the contention of its stages for this machine's
    # two cores.
    n = 14000
    cpu_s = statistics.median((b["decode"] + b["render"]) / len(clips) for b in base)
    cpu_time = n * cpu_s / max(1, args.node_cpus - 1)  # one core goes to the generator actor
    gpu_time = n * windows * GFLOP_PER_WINDOW / (args.gpu_tflops * 1e3)
    print(f"estimate, {n} clips on one node with 1 GPU ({args.gpu_tflops:g} TFLOP/s effective) and "
          f"{args.node_cpus} cores: CPU stages {cpu_s:.2f} s/clip/core -> {cpu_time / 60:.1f} min, generator "
          f"{gpu_time / 60:.1f} min -> about {max(cpu_time, gpu_time) / 60:.1f} min "
          f"({'CPU' if cpu_time > gpu_time else 'GPU'}-bound)")

if __name__ == "__main__":
    main()
