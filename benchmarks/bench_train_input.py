"""Training-input benchmark: the Ray Train input pipeline alone, no model.

Writes a synthetic window set (default 20,000 full-size windows, about 2.6 GB of bass + drums
images, in files of `--windows-per-file` rows like `prepare`'s one file per track), then runs
the real training input (`train.trainer.build_datasets` + the worker's `train.batches` streams)
in a TorchTrainer with N workers that only iterate one epoch, for each shuffle mode:

- full:  a cluster-wide `random_shuffle` per epoch and stream (the old default);
- local: random file/block order + a per-worker shuffle buffer (the default now).

It prints windows/s (all workers together), the peak RSS of each worker and of the driver, and
the ratio to what a full-size CycleGAN step consumes (`--step-seconds`, measured by
bench_train_step.py: 1 window per step per worker).

    .venv/bin/python benchmarks/bench_train_input.py [--windows 20000] [--workers 2]
        [--modes full,local] [--repeats 3] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.mel import MelParams
from pipelines.windows import images_to_binary, window_schema


def write_windows(root: str, windows: int, per_file: int, params: MelParams) -> None:
    """Random-texture windows (incompressible, like real spectrograms after Snappy)."""
    rng = np.random.default_rng(0)
    schema = window_schema(params)
    for start in range(0, windows, per_file):
        n = min(per_file, windows - start)
        images = rng.integers(0, 256, size=(2, n, params.n_mels, params.window_frames),
                              dtype=np.uint8)
        table = pa.Table.from_arrays([
            pa.array([f"track{start // per_file:05d}"] * n),
            pa.array(["train"] * n),
            pa.array(np.arange(n, dtype=np.int32)),
            pa.array(np.arange(n, dtype=np.int32) * params.stride_frames),
            images_to_binary(images[0]), images_to_binary(images[1]),
            pa.array(np.zeros(n, np.float32)), pa.array(np.zeros(n, np.float32)),
        ], schema=schema)
        pq.write_table(table, os.path.join(root, f"track{start // per_file:05d}.parquet"))


def iterate_epoch(loop_config: dict) -> None:
    """A worker that reads one epoch of its shard(s) through the training streams."""
    import ray.train
    import torch

    from train.config import TrainConfig
    from train.batches import window_stream

    cfg = TrainConfig.from_dict(loop_config["config"])
    params = MelParams.from_dict(loop_config["mel_params"])
    rank = ray.train.get_context().get_world_rank()
    device = torch.device("cpu")
    bass = window_stream(ray.train.get_dataset_shard("bass"), "bass", cfg, params, device,
                          False, seed=(0, 0, rank, 1))
    drums = window_stream(ray.train.get_dataset_shard("drums"), "drums", cfg, params, device,
                           False, seed=(0, 0, rank, 2))
    start, n = time.perf_counter(), 0
    for b, d in zip(bass, drums):
        n += b.shape[0]
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.train.report({"rank": rank, "windows": n, "seconds": seconds, "peak_rss_mb": peak_mb})
    # Rank 0's metrics are the ones kept: gather every worker's figures through a file.
    with open(os.path.join(loop_config["out"], f"rank{rank}.txt"), "w") as f:
        f.write(f"{n} {seconds} {peak_mb}\n")


def run_mode(data: str, mode: str, workers: int, out: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.config import TrainConfig
    from train.trainer import build_datasets

    cfg = TrainConfig(shuffle=mode).resolved()
    for name in os.listdir(out):
        os.remove(os.path.join(out, name))
    wall = time.perf_counter()
    trainer = TorchTrainer(
        iterate_epoch,
        train_loop_config={"config": cfg.to_dict(), "mel_params": MelParams().to_dict(), "out": out},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"input-{mode}", storage_path=tempfile.mkdtemp()),
        datasets=build_datasets(data, cfg),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    wall = time.perf_counter() - wall
    ranks = [tuple(map(float, open(os.path.join(out, f)).read().split()))
             for f in sorted(os.listdir(out))]
    windows = sum(r[0] for r in ranks)
    slowest = max(r[1] for r in ranks)
    return {"windows": windows, "windows_per_s": windows / slowest, "wall_s": wall,
            "worker_peak_mb": [round(r[2]) for r in ranks]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=20000, help="windows in the synthetic set (default 20000)")
    ap.add_argument("--windows-per-file", type=int, default=100, help="rows per Parquet file (default 100)")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    ap.add_argument("--modes", default="full,local", help="shuffle modes to compare (default full,local)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode, median reported (default 3)")
    ap.add_argument("--step-seconds", type=float, default=5.4,
                    help="seconds of one full-size CycleGAN step on this machine (bench_train_step.py; default 5.4)")
    ap.add_argument("--object-store-gb", type=float, default=4.0, help="local Ray object store (default 4)")
    ap.add_argument("--keep", default=None, help="folder for the synthetic set (kept; default: a temp folder)")
    args = ap.parse_args()

    import ray

    data = args.keep or tempfile.mkdtemp(prefix="bench-input-")
    os.makedirs(data, exist_ok=True)
    if not os.listdir(data):
        t = time.perf_counter()
        write_windows(data, args.windows, args.windows_per_file, MelParams())
        print(f"wrote {args.windows} windows in {time.perf_counter() - t:.1f} s to {data}")
    size_gb = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data)) / 1e9
    ray.init(num_cpus=max(4, args.workers + 2), include_dashboard=False, log_to_driver=False,
             object_store_memory=int(args.object_store_gb * 2 ** 30))
    out = tempfile.mkdtemp()
    need = args.workers / args.step_seconds  # windows/s the full-size steps consume
    print(f"data: {args.windows} windows, {size_gb:.2f} GB; {args.workers} workers; "
          f"a full-size step on this CPU consumes {need:.2f} windows/s")
    for mode in args.modes.split(","):
        runs = [run_mode(data, mode, args.workers, out) for _ in range(args.repeats)]
        rate = statistics.median(r["windows_per_s"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        peaks = [max(r["worker_peak_mb"][i] for r in runs) for i in range(args.workers)]
        print(f"{mode:>5}: {rate:8.1f} windows/s (median of {len(runs)}; {rate / need:,.0f}x a "
              f"full-size step's need), epoch wall {wall:.1f} s, peak RSS per worker {peaks} MB")
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"driver peak RSS {driver_mb:.0f} MB")
    ray.shutdown()
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
