"""What data-parallel training costs without Ray: the gradient all-reduce apart from Ray's share.

Runs the project's own CycleGAN update (`train.steps.cyclegan_step`, full-size networks,
batch 1) in N plain processes started with torch.multiprocessing, one torch thread per
process unless --threads, in two variants:

- no sync: each process steps on its own (what N independent loops can do on this machine);
- DDP:     every network wrapped in DistributedDataParallel over gloo, as
           `ray.train.torch.prepare_model` wraps them in a Ray Train worker on CPU.

Set beside `bench_train_step.py` (Ray Train with N workers x 1 CPU, same arithmetic) it splits
Ray Train's gap to the plain loop into what DDP itself costs and what Ray adds.  Rounds
alternate the variants, so a drifting host load hits both; medians over all processes' timed
steps.

    .venv/bin/python benchmarks/bench_train_sync.py [--processes 2] [--steps 4] [--warmup 1]
        [--rounds 2] [--precision bf16|fp32] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.config import TrainConfig
from train.steps import cyclegan_step
from train.models import build_networks
from train.pool import ImagePool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adam(nets: dict, prefix: str, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = itertools.chain(*(net.parameters() for name, net in nets.items() if name.startswith(prefix)))
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def worker(rank: int, world: int, ddp: bool, port: int, args, results) -> None:
    """One process: build the networks, take warmup + steps updates, put (rank, seconds) on `results`."""
    torch.set_num_threads(args.threads)
    if ddp:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = TrainConfig().resolved()
    torch.manual_seed(cfg.seed)
    nets = build_networks(cfg.to_dict())
    wrapped = {k: torch.nn.parallel.DistributedDataParallel(v) for k, v in nets.items()} if ddp else nets
    optimizers = {"gen": _adam(nets, "gen_", cfg), "critic": _adam(nets, "critic_", cfg)}
    pools = {"bass": ImagePool(cfg.pool_size, random.Random(1)), "drums": ImagePool(cfg.pool_size, random.Random(2))}
    bf16 = args.precision == "bf16"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    noise = torch.Generator().manual_seed(rank)
    times = []
    for i in range(args.warmup + args.steps):
        bass, drums = (torch.rand(1, 1, 256, 256, generator=noise) * 2 - 1 for _ in range(2))
        start = time.perf_counter()
        losses = cyclegan_step(bass, drums, wrapped, nets, optimizers, pools, cfg, autocast)
        losses["loss_g"].item()  # the loop logs losses; this waits for the step as the loop does
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    results.put((rank, times))
    if ddp:
        dist.destroy_process_group()


def run(ddp: bool, args) -> list[float]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, args.processes, ddp, port, args, results))
             for r in range(args.processes)]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in results.get()[1]]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a benchmark process exited with {p.exitcode}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2, help="plain processes, like Ray Train workers (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per process and round (default 4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of both variants, alternating (default 2)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                    help="bf16 autocast (what --precision auto is on a CPU with bf16) or fp32 (default bf16)")
    args = ap.parse_args()
    print(f"CycleGAN step (cyclegan_step), batch 1, {args.processes} plain processes x {args.threads} "
          f"thread(s), {args.precision}; medians of {args.steps} steps per process and round", flush=True)
    times = {False: [], True: []}
    for r in range(args.rounds):
        for ddp in (False, True):
            got = run(ddp, args)
            times[ddp] += got
            print(f"round {r + 1}, {'DDP (gloo)' if ddp else 'no sync':<10}: median step "
                  f"{statistics.median(got):6.2f} s, {args.processes / statistics.median(got):.3f} samples/s",
                  flush=True)
    rate = {ddp: args.processes / statistics.median(t) for ddp, t in times.items()}
    print(f"\nno sync    {rate[False]:.3f} samples/s\nDDP (gloo) {rate[True]:.3f} samples/s "
          f"= x{rate[True] / rate[False]:.3f} of no sync: what the all-reduce costs")


if __name__ == "__main__":
    main()
