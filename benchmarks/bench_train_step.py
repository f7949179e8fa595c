"""Training-step benchmark: full-size CycleGAN (paper defaults, batch 1, 256x256 windows).

Baseline: a plain single-process PyTorch loop written the way the reference research
code runs it (fp32, default memory format, one sample, no DDP, loss values read
back every step), on the same networks.
Ours: the Ray Train loop (`cycledrums train`) with 1 and with 2 workers reading
Ray Data shards, at each `--precisions`: fp32 (the baseline's arithmetic, so the
ratio is Ray Train's own cost) and auto (the default: bf16 autocast on a GPU, with
channels-last, and on a CPU with AMX tiles or AVX512-BF16; optionally
torch.compile).  When auto means bf16, the plain loop also runs with bf16 autocast, so each Ray run is set
beside the plain loop of its own arithmetic as well as beside the fp32 baseline.
All in one run, on the same machine; medians of the timed steps.

To split Ray's cost from our loop's, the plain loop's own step also runs inside one Ray
Train worker (no Ray Data, none of our loop; `--no-reference-in-ray` skips it), and each Ray
run prints what every other process on the machine (Ray's own among them) used during its
timed steps: cores and wake-ups per second (`host_load.py`).

One full step is about 1.9 TFLOP: on a 2-core CPU that is tens of seconds, so the
default run is short (1 warm-up + 2 timed steps each).

    .venv/bin/python benchmarks/bench_train_step.py [--steps 2] [--warmup 1]
        [--workers 1,2] [--precisions fp32,auto] [--gpu] [--compile]
        [--ngf 64 --ndf 64 --n-blocks 9]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.mel import MelParams, image_to_model
from pipelines.windows import binary_to_images
from train.config import PRECISIONS, TrainConfig, uses_bf16
from train.models import build_networks
from train.pool import ImagePool

from host_load import HostLoad, describe

TRAIN_WORKERS = ("ray::RayTrainWorker",)  # the measured work; every other process is "other"


def reference_style_loop(bass: np.ndarray, drums: np.ndarray, cfg: TrainConfig, device: str,
                         steps: int, warmup: int, bf16: bool = False) -> list[float]:
    """Seconds per step of the plain loop (batch 1, one process; fp32 unless `bf16`)."""
    torch.manual_seed(0)
    nets = {k: v.to(device) for k, v in build_networks(cfg.to_dict()).items()}
    G, Fb = nets["gen_bass_to_drums"], nets["gen_drums_to_bass"]
    D_bass, D_drums = nets["critic_bass"], nets["critic_drums"]
    opt_g = torch.optim.Adam(itertools.chain(G.parameters(), Fb.parameters()), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(itertools.chain(D_bass.parameters(), D_drums.parameters()),
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    pool_bass, pool_drums = ImagePool(cfg.pool_size), ImagePool(cfg.pool_size)
    mse = torch.nn.MSELoss()

    def gan(pred, real):
        pred = pred.float()
        return mse(pred, torch.ones_like(pred) if real else torch.zeros_like(pred))

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    times = []
    for i in range(warmup + steps):
        j = i % len(bass)
        real_a = image_to_model(torch.from_numpy(bass[j:j + 1])).unsqueeze(1).to(device)
        real_b = image_to_model(torch.from_numpy(drums[(j * 7 + 3) % len(drums)][None])).unsqueeze(1).to(device)
        start = time.perf_counter()
        with autocast():
            # forward
            fake_b = G(real_a)
            rec_a = Fb(fake_b)
            fake_a = Fb(real_b)
            rec_b = G(fake_a)
            # generators, critics frozen
            for p in itertools.chain(D_bass.parameters(), D_drums.parameters()):
                p.requires_grad = False
            opt_g.zero_grad()
            idt_a = G(real_b)
            idt_b = Fb(real_a)
            loss_idt = ((F.l1_loss(idt_a.float(), real_b) + F.l1_loss(idt_b.float(), real_a))
                        * cfg.lambda_cycle * cfg.lambda_identity)
            loss_g = (gan(D_drums(fake_b), True) + gan(D_bass(fake_a), True)
                      + (F.l1_loss(rec_a.float(), real_a) + F.l1_loss(rec_b.float(), real_b)) * cfg.lambda_cycle
                      + loss_idt)
        loss_g.backward()
        opt_g.step()
        # critics
        for p in itertools.chain(D_bass.parameters(), D_drums.parameters()):
            p.requires_grad = True
        opt_d.zero_grad()
        fb = pool_drums.query(fake_b.float())
        with autocast():
            loss_db = 0.5 * (gan(D_drums(real_b), True) + gan(D_drums(fb.detach()), False))
        loss_db.backward()
        fa = pool_bass.query(fake_a.float())
        with autocast():
            loss_da = 0.5 * (gan(D_bass(real_a), True) + gan(D_bass(fa.detach()), False))
        loss_da.backward()
        opt_d.step()
        _ = {"G": loss_g.item(), "D_A": loss_da.item(), "D_B": loss_db.item()}  # as the reference logs
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def ray_loop(data: str, cfg_options: dict, workers: int, cpus_per_worker: float, use_gpu: bool,
             steps: int, warmup: int) -> tuple[list[float], tuple[float, float]]:
    """(seconds per step (per worker step = `workers` samples) of `cycledrums train`, the
    wall-clock window of the timed steps)."""
    from train.runlog import read_metrics
    from train.trainer import train

    with tempfile.TemporaryDirectory(prefix="bench-train-") as run_dir:
        options = cfg_options | {"max_steps": warmup + steps, "log_every": 1,
                                 "checkpoint_every": 10 ** 6, "images_per_epoch": 0}
        train(data, run_dir, options, num_workers=workers, device="cuda" if use_gpu else "cpu",
              cpus_per_worker=cpus_per_worker, max_failures=0)
        records = [m for m in read_metrics(run_dir) if "event" not in m]
    timed = records[warmup:]
    window = (records[warmup - 1]["time"] if warmup else timed[0]["time"] - workers / timed[0]["samples_per_s"],
              timed[-1]["time"])
    return [workers / m["samples_per_s"] for m in timed], window


def _reference_step_per_worker(config: dict) -> None:
    import ray.train

    torch.set_num_threads(config["threads"])
    cfg = TrainConfig.from_dict(config["cfg"])
    times = reference_style_loop(config["bass"], config["drums"], cfg, "cpu", config["steps"],
                                 config["warmup"], bf16=config["bf16"])
    end = time.time()
    with tempfile.TemporaryDirectory() as folder:  # Ray Train keeps metrics that come with a checkpoint
        ray.train.report({"times": times, "end": end}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def reference_in_ray_train(bass: np.ndarray, drums: np.ndarray, cfg: TrainConfig, cpus: int,
                           steps: int, warmup: int, bf16: bool) -> tuple[list[float], tuple[float, float]]:
    """The plain loop's own step (no Ray Data, none of our loop) inside one Ray Train worker
    with `cpus` CPUs: its gap to the plain loop is what the Ray Train worker and Ray's own
    processes cost by themselves.  (times, wall-clock window of the timed steps)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory(prefix="bench-train-ref-") as storage:
        result = TorchTrainer(
            _reference_step_per_worker,
            train_loop_config={"bass": bass[:4], "drums": drums[:4], "cfg": cfg.to_dict(),
                               "threads": cpus, "steps": steps, "warmup": warmup, "bf16": bf16},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(storage_path=storage, name="reference-step")).fit()
    times, end = result.metrics["times"], result.metrics["end"]
    return times, (end - sum(times), end)


def report(name: str, times: list[float], samples_per_step: int, base: float | None) -> float:
    rate = samples_per_step / statistics.median(times)
    ratio = f"  x{rate / base:.2f} vs plain loop" if base else ""
    load = os.getloadavg()[0]
    print(f"{name:<46} median step {statistics.median(times):7.2f} s  "
          f"{rate:7.3f} samples/s{ratio}   (steps: {', '.join(f'{t:.2f}' for t in times)}; "
          f"load avg {load:.1f})", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (default 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (default 1)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to run (default 1,2)")
    ap.add_argument("--precisions", default="fp32,auto",
                    help="--precision values for the Ray runs (default fp32,auto: fp32 measures "
                         "Ray Train's own cost against the fp32 baseline; auto is what users get)")
    ap.add_argument("--gpu", action="store_true", help="run on CUDA (Ray: one GPU per worker)")
    ap.add_argument("--compile", action="store_true", help="torch.compile in the Ray loop")
    ap.add_argument("--ngf", type=int, default=64, help="generator width (default 64, the paper's)")
    ap.add_argument("--ndf", type=int, default=64, help="critic width (default 64)")
    ap.add_argument("--n-blocks", type=int, default=9, help="ResNet blocks (default 9)")
    ap.add_argument("--reference-in-ray", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the plain loop's own step inside one Ray Train worker (CPU only; "
                         "default on): splits Ray's cost from our loop's and its input's")
    args = ap.parse_args()

    import ray

    from cluster.ray_runtime import init_ray
    from train.synth_windows import write_synth_windows

    device = "cuda" if args.gpu else "cpu"
    cores = os.cpu_count() or 1
    cfg = TrainConfig(ngf=args.ngf, ndf=args.ndf, n_blocks=args.n_blocks).resolved()
    print(f"CycleGAN step, batch 1 per worker, 256x256, ngf {cfg.ngf} ndf {cfg.ndf} "
          f"n_blocks {cfg.n_blocks}; {cores} cores, device {device}, torch {torch.__version__}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-train-data-") as tmp:
        data = os.path.join(tmp, "windows")
        params = MelParams()
        table = write_synth_windows(data, tracks=4, seconds=30.0, params=params)
        train_rows = table.filter(np.array(table.column("split").to_pylist()) == "train")
        bass = np.array(binary_to_images(train_rows.column("bass"), params))
        drums = np.array(binary_to_images(train_rows.column("drums"), params))

        # The plain loops run before and after the Ray runs: on a shared machine the load
        # drifts, and each baseline is the median over both.
        precisions = args.precisions.split(",")
        for p in precisions:
            if p not in PRECISIONS:
                ap.error(f"--precisions: {p!r} is not one of {PRECISIONS}")
        arithmetic = {p: "bf16" if uses_bf16(p, device) else "fp32" for p in precisions}
        plain_kinds = ["fp32"] + sorted(set(arithmetic.values()) - {"fp32"})
        threads = torch.get_num_threads()
        plain = {k: reference_style_loop(bass, drums, cfg, device, args.steps, args.warmup,
                                         bf16=k == "bf16") for k in plain_kinds}
        for k, times in plain.items():
            report(f"plain loop ({k}, 1 process, {threads} threads), before", times, 1, None)

        # Logical CPUs: what the workers reserve, plus room for the Ray Data tasks.
        init_ray(None, num_cpus=max(4, cores + 2))
        runs = []  # (name, times, workers, precision or None for the reference step, arithmetic)

        def ran(name, times, window, workers, p, kind):
            runs.append((name, times, workers, p, kind))
            report(name, times, workers, None)
            print(f"{'':<46} {describe(load.window(*window, exclude=TRAIN_WORKERS))}", flush=True)

        with HostLoad() as load:
            if args.reference_in_ray and not args.gpu:
                for k in sorted(set(arithmetic.values())):
                    times, window = reference_in_ray_train(bass, drums, cfg, cores, args.steps,
                                                           args.warmup, bf16=k == "bf16")
                    ran(f"plain loop's step in 1 Ray Train worker x {cores} CPU ({k})", times, window,
                        1, None, k)
            for p in precisions:
                options = {"ngf": cfg.ngf, "ndf": cfg.ndf, "n_blocks": cfg.n_blocks,
                           "compile": args.compile, "precision": p}
                for workers in [int(w) for w in args.workers.split(",")]:
                    cpus = 1.0 if args.gpu else max(1, cores // workers)
                    times, window = ray_loop(data, options, workers, cpus, args.gpu, args.steps,
                                             args.warmup)
                    layout = " + channels-last" if args.gpu and arithmetic[p] == "bf16" else ""
                    ran(f"Ray Train, {workers} worker(s) x {cpus:g} CPU, {p} ({arithmetic[p]}{layout})",
                        times, window, workers, p, arithmetic[p])
        ray.shutdown()
        for k in plain_kinds:
            after = reference_style_loop(bass, drums, cfg, device, args.steps, args.warmup,
                                         bf16=k == "bf16")
            report(f"plain loop ({k}, 1 process, {threads} threads), after", after, 1, None)
            plain[k] = plain[k] + after

        print("\nsummary (medians; baseline = the plain fp32 loop, before and after together)")
        base = {k: report(f"plain loop ({k}, 1 process, {threads} threads)", times, 1,
                          None) for k, times in plain.items()}
        speeds = {}  # (precision, workers) -> samples/s
        for name, times, workers, p, kind in runs:
            rate = report(name, times, workers, base["fp32"])
            if p is not None:
                speeds[p, workers] = rate
            if kind != "fp32":
                print(f"{'':<46} x{rate / base[kind]:.2f} vs the plain loop in {kind}")
        for p in precisions:
            if (p, 1) in speeds and (p, 2) in speeds:
                print(f"scaling 1 -> 2 workers ({p}): x{speeds[p, 2] / speeds[p, 1]:.2f} samples/s")


if __name__ == "__main__":
    main()
