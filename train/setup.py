"""A training worker's set-up: device and precision, networks, optimisers, restored state.

Each step is a function returning a small dataclass, called in this order by
`train_loop_per_worker` (train/loop.py).  The order matters for the numerics: the
networks are initialised right after seeding with the run's seed (every worker
builds the same ones), and each worker's own RNG is seeded only after the networks
and optimisers exist.
"""
from __future__ import annotations

import contextlib
import itertools
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pipelines.mel import MelParams
from train.checkpoint import read_weights, resolve_checkpoint
from train.config import TrainConfig, uses_bf16
from train.models import build_networks
from train.pool import ImagePool
from train.runlog import RunLog, say
from train.worker_checkpoint import load_weights, python_rng_state


@dataclass
class WorkerRun:
    """What the driver sent every worker (train/trainer.py's train_loop_config), parsed."""
    cfg: TrainConfig
    params: MelParams
    steps_per_epoch: int
    total_steps: int
    checkpoint_config: dict  # config.json of this run's checkpoints
    loop_config: dict  # the rest: run_dir, storage, resume point, placements, on_step

    @classmethod
    def from_loop_config(cls, loop_config: dict) -> WorkerRun:
        cfg = TrainConfig.from_dict(loop_config["config"])
        params = MelParams.from_dict(loop_config["mel_params"])
        steps_per_epoch, total_steps = loop_config["steps_per_epoch"], loop_config["total_steps"]
        checkpoint_config = cfg.to_dict() | {"mel_params": params.to_dict(),
                                             "steps_per_epoch": steps_per_epoch,
                                             "total_steps": total_steps}
        return cls(cfg, params, steps_per_epoch, total_steps, checkpoint_config, loop_config)

    def stop_at(self, step: int) -> int:
        """The step this invocation ends at, starting from `step` (--stop-after-steps)."""
        if self.cfg.stop_after_steps is None:
            return self.total_steps
        return min(self.total_steps, step + self.cfg.stop_after_steps)


@dataclass
class Runtime:
    """Where and how this worker computes."""
    rank: int
    world: int
    device: torch.device
    use_bf16: bool
    channels_last: bool
    autocast: Callable[[], contextlib.AbstractContextManager]  # bf16 autocast or a no-op


def setup_device_and_precision(run: WorkerRun) -> Runtime:
    import ray.train
    import ray.train.torch

    from cluster.placement import claim_train_device

    cfg, cpus = run.cfg, int(run.loop_config.get("cpus_per_worker", 1))
    context = ray.train.get_context()
    # The shared policy's checks: a GPU worker without CUDA stops the run (cluster/resources.py).
    device = claim_train_device(ray.train.torch.get_device(),
                                book=run.loop_config.get("placements"), torch_threads=cpus)
    on_gpu = device.type == "cuda"
    if not on_gpu:  # one intra-op thread per reserved CPU, so workers don't oversubscribe cores
        torch.set_num_threads(max(1, cpus))
    use_bf16 = uses_bf16(cfg.precision, device.type)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 \
        else contextlib.nullcontext
    rt = Runtime(context.get_world_rank(), context.get_world_size(), device, use_bf16,
                 cfg.channels_last if cfg.channels_last is not None else on_gpu, autocast)
    if rt.rank == 0:
        say(f"workers on {device.type}: {'bf16 autocast' if use_bf16 else 'fp32'} "
            f"(--precision {cfg.precision}), {torch.get_num_threads()} torch threads each")
    return rt


@dataclass
class Nets:
    """The run's networks by key (train/models.py), three views of the same parameters."""
    raw: dict[str, nn.Module]  # what checkpoints save and restore
    wrapped: dict[str, nn.Module]  # DDP (and compiled): the updates' forward passes
    plain: dict[str, nn.Module]  # no DDP: critics inside the generator update (train/steps.py)


def build_models(run: WorkerRun, rt: Runtime, restored: dict | None) -> Nets:
    """The seeded networks with their starting weights (restored, else --init-from), on the device."""
    import ray.train.torch

    torch.manual_seed(run.cfg.seed)  # every worker initialises the same networks
    raw = build_networks(run.checkpoint_config)
    if restored:
        load_weights(raw, restored["weights"])
    elif run.cfg.init_from:
        s3 = run.loop_config.get("s3_endpoint_url")
        source = resolve_checkpoint(run.cfg.init_from, s3)
        load_weights(raw, read_weights(source, s3))
        if rt.rank == 0:
            say(f"initialised weights from {source}")
    for net in raw.values():
        net.to(rt.device)
        if rt.channels_last:
            net.to(memory_format=torch.channels_last)
    wrapped = {name: ray.train.torch.prepare_model(net, move_to_device=False)
               for name, net in raw.items()}
    plain = dict(raw)
    if run.cfg.compile:
        wrapped = {name: torch.compile(net) for name, net in wrapped.items()}
        plain = {name: torch.compile(net) for name, net in plain.items()}
    return Nets(raw, wrapped, plain)


@dataclass
class Optimizers:
    """Adam for the generators and for the critics, their lr schedules, the fakes' pools."""
    optimizers: dict[str, torch.optim.Optimizer]  # "gen", "critic"
    schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR]
    pools: dict[str, ImagePool]  # "bass", "drums": CycleGAN's history of generated fakes

    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.schedulers["gen"].get_last_lr()[0]

    def step_schedulers(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()


def build_optimizers(nets: dict[str, nn.Module], run: WorkerRun, rank: int) -> Optimizers:
    """Adam, lr constant then linearly decayed to zero; a pool per domain, seeded per worker."""
    cfg = run.cfg

    def adam(prefix: str) -> torch.optim.Adam:
        params = itertools.chain(*(net.parameters() for n, net in nets.items() if n.startswith(prefix)))
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    optimizers = {"gen": adam("gen_"), "critic": adam("critic_")}
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cfg.lr_factor(s, run.total_steps)) for k, opt in optimizers.items()}
    pools = {"bass": ImagePool(cfg.pool_size, random.Random(cfg.seed + 1000 * rank + 1)),
             "drums": ImagePool(cfg.pool_size, random.Random(cfg.seed + 1000 * rank + 2))}
    return Optimizers(optimizers, schedulers, pools)


def restore(opt: Optimizers, restored: dict | None, run: WorkerRun, rt: Runtime) -> int:
    """Seed this worker's RNGs, then load the checkpoint's training state; the step to start from."""
    # Dropout and the pools' draws differ per worker; a restored worker continues its own RNG.
    torch.manual_seed(run.cfg.seed + 7919 * rt.rank)
    if not restored:
        return 0
    state = restored["state"]
    for k in opt.optimizers:
        opt.optimizers[k].load_state_dict(state["optimizers"][k])
        opt.schedulers[k].load_state_dict(state["schedulers"][k])
    worker = restored.get("worker")
    if worker:
        for k, pool in opt.pools.items():
            pool.load_state_dict(worker["pools"][k], rt.device)
        random.setstate(python_rng_state(worker["python_rng"]))
        torch.set_rng_state(worker["torch_rng"])
    step = int(state["step"])
    if rt.rank == 0:
        say(f"resumed from step {step} (lr {opt.lr():.3g})")
    return step


def open_run_log(run: WorkerRun, rt: Runtime, step: int, resumed: bool) -> RunLog | None:
    """Rank 0's log, with a start record; None on the other workers."""
    if rt.rank != 0:
        return None
    log = RunLog(run.loop_config["run_dir"], run.loop_config.get("s3_endpoint_url"))
    log.truncate_after(step)  # steps an earlier attempt logged past this checkpoint come again
    log.write([{"event": "start", "step": step, "world_size": rt.world, "device": str(rt.device),
                "bf16": rt.use_bf16, "resumed": resumed, "time": time.time()}])
    return log
