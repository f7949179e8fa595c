"""The per-worker training loop: what every Ray Train worker runs.

`train_loop_per_worker` reads top to bottom: build the networks, restore (from
this run's latest checkpoint, else `init_from`'s weights), wrap for DDP, then
step through the worker's data shard, logging, checkpointing and drawing
previews on the way.  The two models' update rules are `cyclegan_step` and
`pix2pix_step`.

DDP notes (docs/design.md, "Training"): each network is wrapped once.  The generator update
feeds fakes through the *plain* critic modules with their gradients switched
off, so no critic DDP forward is pending without a backward; the critic update
goes through the DDP-wrapped critics.  `ray.train.report` is a barrier, so every
worker checkpoints at the same steps (all shards hold the same number of
batches per epoch: Ray Train splits the data with equal=True).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import posixpath
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cluster.console import format_duration
from pipelines.mel import MelParams, image_to_model, model_to_image
from pipelines.windows import binary_to_images
from train.checkpoint import (PROGRESS, STATE, WEIGHTS, read_weights, resolve_checkpoint,
                              write_checkpoint)
from train.config import TrainConfig, uses_bf16
from train.models import build_networks
from train.pool import ImagePool

LOSS_NAMES = {
    "cyclegan": ("loss_g", "loss_g_adv", "loss_cycle", "loss_identity", "loss_d_bass",
                 "loss_d_drums"),
    "pix2pix": ("loss_g", "loss_g_adv", "loss_l1", "loss_d_drums"),
}


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from cluster.placement import claim_train_device

    cfg = TrainConfig.from_dict(loop_config["config"])
    params = MelParams.from_dict(loop_config["mel_params"])
    steps_per_epoch, total_steps = loop_config["steps_per_epoch"], loop_config["total_steps"]
    on_step = loop_config.get("on_step")
    checkpoint_config = cfg.to_dict() | {"mel_params": params.to_dict(),
                                         "steps_per_epoch": steps_per_epoch,
                                         "total_steps": total_steps}
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # The shared policy's checks: a GPU worker without CUDA stops the run (cluster/resources.py).
    device = claim_train_device(ray.train.torch.get_device(), book=loop_config.get("placements"),
                                torch_threads=int(loop_config.get("cpus_per_worker", 1)))
    on_gpu = device.type == "cuda"
    if not on_gpu:  # one intra-op thread per reserved CPU, so workers don't oversubscribe cores
        torch.set_num_threads(max(1, int(loop_config.get("cpus_per_worker", 1))))
    use_bf16 = uses_bf16(cfg.precision, device.type)
    channels_last = cfg.channels_last if cfg.channels_last is not None else on_gpu
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 \
        else contextlib.nullcontext
    if rank == 0:
        _say(f"workers on {device.type}: {'bf16 autocast' if use_bf16 else 'fp32'} "
             f"(--precision {cfg.precision}), {torch.get_num_threads()} torch threads each")

    # ---- networks, restored from this run's checkpoint or another run's weights
    torch.manual_seed(cfg.seed)
    nets = build_networks(checkpoint_config)
    checkpoint = _checkpoint_to_restore(ray.train.get_checkpoint(), loop_config)
    restored = _read_checkpoint(checkpoint, rank) if checkpoint else None
    if restored:
        _load_weights(nets, restored["weights"])
    elif cfg.init_from:
        source = resolve_checkpoint(cfg.init_from, loop_config.get("s3_endpoint_url"))
        _load_weights(nets, read_weights(source, loop_config.get("s3_endpoint_url")))
        if rank == 0:
            _say(f"initialised weights from {source}")
    for net in nets.values():
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    wrapped = {name: ray.train.torch.prepare_model(net, move_to_device=False)
               for name, net in nets.items()}
    plain = dict(nets)  # the same parameters, without DDP (critics in the generator update)
    if cfg.compile:
        wrapped = {name: torch.compile(net) for name, net in wrapped.items()}
        plain = {name: torch.compile(net) for name, net in plain.items()}

    # ---- optimisers: Adam, lr constant then linearly decayed to zero
    def adam(names):
        return torch.optim.Adam(itertools.chain(*(nets[n].parameters() for n in names)),
                                lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    gen_names = [n for n in nets if n.startswith("gen_")]
    critic_names = [n for n in nets if n.startswith("critic_")]
    optimizers = {"gen": adam(gen_names), "critic": adam(critic_names)}
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cfg.lr_factor(s, total_steps)) for k, opt in optimizers.items()}
    pools = {"bass": ImagePool(cfg.pool_size, random.Random(cfg.seed + 1000 * rank + 1)),
             "drums": ImagePool(cfg.pool_size, random.Random(cfg.seed + 1000 * rank + 2))}
    step = 0
    # Dropout and the pools' draws differ per worker; a restored worker continues its own RNG.
    torch.manual_seed(cfg.seed + 7919 * rank)
    if restored:
        state = restored["state"]
        for k in optimizers:
            optimizers[k].load_state_dict(state["optimizers"][k])
            schedulers[k].load_state_dict(state["schedulers"][k])
        step = int(state["step"])
        worker = restored.get("worker")
        if worker:
            for k, pool in pools.items():
                pool.load_state_dict(worker["pools"][k], device)
            random.setstate(_tuple_state(worker["python_rng"]))
            torch.set_rng_state(worker["torch_rng"])
        if rank == 0:
            _say(f"resumed from step {step} (lr {schedulers['gen'].get_last_lr()[0]:.3g})")

    # ---- data: this worker's shard(s) of the train windows
    def batches(epoch: int):
        """(bass, drums) model tensors [batch, 1, mels, frames] for one pass over the shard."""
        if cfg.model == "cyclegan":  # unpaired: two independently shuffled streams
            bass = _window_stream(ray.train.get_dataset_shard("bass"), "bass", cfg, params,
                                  device, channels_last, seed=(cfg.seed, epoch, rank, 1))
            drums = _window_stream(ray.train.get_dataset_shard("drums"), "drums", cfg, params,
                                   device, channels_last, seed=(cfg.seed, epoch, rank, 2))
            return zip(bass, drums)
        return _pair_stream(ray.train.get_dataset_shard("pairs"), cfg, params, device,
                            channels_last, seed=(cfg.seed, epoch, rank, 3))

    log = None
    if rank == 0:
        from train.runlog import RunLog

        log = RunLog(loop_config["run_dir"], loop_config.get("s3_endpoint_url"))
        log.truncate_after(step)  # steps an earlier attempt logged past this checkpoint come again
        log.write([{"event": "start", "step": step, "world_size": world,
                    "device": str(device), "bf16": use_bf16, "resumed": bool(restored),
                    "time": time.time()}])

    stop_at = total_steps if cfg.stop_after_steps is None \
        else min(total_steps, step + cfg.stop_after_steps)
    loss_names = LOSS_NAMES[cfg.model]
    pending: list[tuple[int, float, torch.Tensor, float]] = []  # (step, lr, losses, end time) not yet logged
    last = {"time": time.perf_counter(), "losses": {}, "samples_per_s": 0.0}
    preview = [torch.empty(0, 1, params.n_mels, params.window_frames, device=device)] * 2
    last_checkpoint_step = -1 if not restored else step

    def flush_log():
        if not pending:
            return
        if log is None:  # only rank 0 logs: other workers skip the host sync
            pending.clear()
            return
        now = time.perf_counter()
        samples_per_s = len(pending) * cfg.batch_size * world / max(now - last["time"], 1e-9)
        values = torch.stack([p[2] for p in pending]).float().cpu().tolist()  # one sync
        log.write([{"step": s, "epoch": (s - 1) // steps_per_epoch, "lr": lr,
                    **dict(zip(loss_names, v)), "samples_per_s": samples_per_s, "time": ended}
                   for (s, lr, _, ended), v in zip(pending, values)])
        summary = " ".join(f"{k} {x:.3f}" for k, x in zip(loss_names, values[-1]))
        done = pending[-1][0]
        steps_per_s = samples_per_s / (cfg.batch_size * world)
        _say(f"step {done}/{total_steps} epoch {(done - 1) // steps_per_epoch} {summary} "
             f"lr {pending[-1][1]:.3g} {samples_per_s:.2f} samples/s "
             f"ETA {format_duration((stop_at - done) / max(steps_per_s, 1e-9))}")
        last.update(time=now, losses=dict(zip(loss_names, values[-1])),
                    samples_per_s=samples_per_s)
        pending.clear()

    def save_and_report():
        flush_log()
        metrics = {"step": step, "epoch": step // steps_per_epoch,
                   "lr": schedulers["gen"].get_last_lr()[0],
                   "samples_per_s": last["samples_per_s"], **last["losses"]}
        if world > 1:
            metrics["replicas_in_sync"] = _replicas_in_sync(nets, world)
        with tempfile.TemporaryDirectory(prefix="cycledrums-ckpt-") as folder:
            torch.save({"pools": {k: p.state_dict() for k, p in pools.items()},
                        "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()},
                       os.path.join(folder, f"worker_{rank}.pt"))
            if rank == 0:
                write_checkpoint(
                    folder,
                    weights={name: net.state_dict() for name, net in nets.items()},
                    state={"optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                           "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                           "step": step, "epoch": step // steps_per_epoch,
                           "world_size": world},
                    config=checkpoint_config, step=step, epoch=step // steps_per_epoch)
                log.write([{"event": "checkpoint", **metrics, "time": time.time()}])
                log.sync()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_{step:09d}")

    # ---- the loop
    while step < stop_at:
        epoch = step // steps_per_epoch
        wanted = min(steps_per_epoch - step % steps_per_epoch, stop_at - step)
        taken = 0
        for bass, drums in itertools.islice(batches(epoch), wanted):
            if on_step is not None:  # an observer given to train(), e.g. a test's fault
                on_step(rank=rank, step=step + 1, resumed=bool(restored))
            if rank == 0 and len(preview[0]) < cfg.images_per_epoch:  # fixed preview windows
                preview = [torch.cat([preview[0], bass])[:cfg.images_per_epoch],
                           torch.cat([preview[1], drums])[:cfg.images_per_epoch]]
            lr = schedulers["gen"].get_last_lr()[0]
            if cfg.model == "cyclegan":
                losses = cyclegan_step(bass, drums, wrapped, plain, optimizers, pools, cfg, autocast)
            else:
                losses = pix2pix_step(bass, drums, wrapped, plain, optimizers, cfg, autocast)
            for scheduler in schedulers.values():
                scheduler.step()
            step += 1
            taken += 1
            pending.append((step, lr, torch.stack([losses[k] for k in loss_names]), time.time()))
            if _log_due(cfg.log_every, step, last["time"]):
                flush_log()
            if step % cfg.checkpoint_every == 0 and step < stop_at:
                save_and_report()
                last_checkpoint_step = step
        if taken < wanted:
            raise RuntimeError(f"rank {rank}: data shard ended after {taken} of {wanted} "
                               f"batches in epoch {epoch}; workers would fall out of step")
        if step % steps_per_epoch == 0 and rank == 0 and len(preview[0]):
            _save_preview(log, nets["gen_bass_to_drums"], preview, step, steps_per_epoch,
                          autocast)
    if last_checkpoint_step != step:
        save_and_report()
    flush_log()
    if log is not None:
        log.write([{"event": "end", "step": step, "time": time.time()}])
        log.close()


# ---------------------------------------------------------------- update rules


def gan_loss(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """LSGAN (least squares on raw outputs) or vanilla (BCE on logits), in fp32."""
    logits = logits.float()
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def cyclegan_step(bass, drums, wrapped, plain, optimizers, pools, cfg: TrainConfig,
                  autocast) -> dict[str, torch.Tensor]:
    """One CycleGAN update: both generators, then both critics.  bass = domain A, drums = B."""
    to_drums, to_bass = wrapped["gen_bass_to_drums"], wrapped["gen_drums_to_bass"]
    critics = [plain["critic_bass"], plain["critic_drums"]]
    set_requires_grad(critics, False)
    with autocast():
        fake_drums, fake_bass = to_drums(bass), to_bass(drums)
        adv = (gan_loss(plain["critic_drums"](fake_drums), True, cfg.gan_mode)
               + gan_loss(plain["critic_bass"](fake_bass), True, cfg.gan_mode))
        cycle = cfg.lambda_cycle * (F.l1_loss(to_bass(fake_drums).float(), bass)
                                    + F.l1_loss(to_drums(fake_bass).float(), drums))
        identity = torch.zeros((), device=bass.device)
        if cfg.lambda_identity > 0:
            identity = cfg.lambda_cycle * cfg.lambda_identity * (
                F.l1_loss(to_drums(drums).float(), drums) + F.l1_loss(to_bass(bass).float(), bass))
        loss_g = adv + cycle + identity
    optimizers["gen"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["gen"].step()
    set_requires_grad(critics, True)

    shown_drums = pools["drums"].query(fake_drums.detach().float())
    shown_bass = pools["bass"].query(fake_bass.detach().float())
    with autocast():
        critic_drums, critic_bass = wrapped["critic_drums"], wrapped["critic_bass"]
        loss_d_drums = 0.5 * (gan_loss(critic_drums(drums), True, cfg.gan_mode)
                              + gan_loss(critic_drums(shown_drums), False, cfg.gan_mode))
        loss_d_bass = 0.5 * (gan_loss(critic_bass(bass), True, cfg.gan_mode)
                             + gan_loss(critic_bass(shown_bass), False, cfg.gan_mode))
    optimizers["critic"].zero_grad(set_to_none=True)
    (loss_d_drums + loss_d_bass).backward()
    optimizers["critic"].step()
    return {"loss_g": loss_g.detach(), "loss_g_adv": adv.detach(), "loss_cycle": cycle.detach(),
            "loss_identity": identity.detach(), "loss_d_bass": loss_d_bass.detach(),
            "loss_d_drums": loss_d_drums.detach()}


def pix2pix_step(bass, drums, wrapped, plain, optimizers, cfg: TrainConfig,
                 autocast) -> dict[str, torch.Tensor]:
    """One Pix2Pix update (reference order): critic on (bass, drums) pairs, then generator."""
    generator, critic = wrapped["gen_bass_to_drums"], wrapped["critic_drums"]
    with autocast():
        fake = generator(bass)
        loss_d = 0.5 * (gan_loss(critic(torch.cat([bass, fake.detach()], 1)), False, cfg.gan_mode)
                        + gan_loss(critic(torch.cat([bass, drums], 1)), True, cfg.gan_mode))
    optimizers["critic"].zero_grad(set_to_none=True)
    loss_d.backward()
    optimizers["critic"].step()

    set_requires_grad([plain["critic_drums"]], False)
    with autocast():
        adv = gan_loss(plain["critic_drums"](torch.cat([bass, fake], 1)), True, cfg.gan_mode)
        l1 = cfg.lambda_l1 * F.l1_loss(fake.float(), drums)
        loss_g = adv + l1
    optimizers["gen"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["gen"].step()
    set_requires_grad([plain["critic_drums"]], True)
    return {"loss_g": loss_g.detach(), "loss_g_adv": adv.detach(), "loss_l1": l1.detach(),
            "loss_d_drums": loss_d.detach()}


# ---------------------------------------------------------------- data


def _iter_arrow(shard, cfg: TrainConfig, seed: tuple):
    kwargs = dict(batch_size=cfg.batch_size, batch_format="pyarrow", drop_last=True,
                  prefetch_batches=2)
    if cfg.shuffle == "local":
        kwargs.update(local_shuffle_buffer_size=cfg.shuffle_buffer,
                      local_shuffle_seed=hash(seed) % (2 ** 31))
    return shard.iter_batches(**kwargs)


def _to_model(column, params: MelParams, device, channels_last: bool) -> torch.Tensor:
    images = torch.from_numpy(np.array(binary_to_images(column, params)))  # own the bytes
    if device.type == "cuda":
        images = images.pin_memory()  # lets the copy below run asynchronously
    x = image_to_model(images.to(device, non_blocking=True)).unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _window_stream(shard, column: str, cfg, params, device, channels_last, seed):
    for batch in _iter_arrow(shard, cfg, seed):
        yield _to_model(batch.column(column), params, device, channels_last)


def _pair_stream(shard, cfg, params, device, channels_last, seed):
    for batch in _iter_arrow(shard, cfg, seed):
        yield (_to_model(batch.column("bass"), params, device, channels_last),
               _to_model(batch.column("drums"), params, device, channels_last))


# ---------------------------------------------------------------- helpers


def _checkpoint_to_restore(latest, loop_config: dict):
    """Ray's latest checkpoint of this run, unless the storage holds a newer complete one.

    `resume_checkpoint` is what the driver found on storage (newest readable checkpoint).
    Ray's run snapshot can lag behind it (the driver was killed after a checkpoint was
    persisted but before the snapshot was updated): resuming from the snapshot would go
    back in time and overwrite newer checkpoints.  After a worker restart within this
    invocation Ray's checkpoint is the newer one and wins.
    """
    import ray.train

    from pipelines.storage import arrow_filesystem

    stored = loop_config.get("resume_checkpoint")
    if not stored:
        return latest
    fs, path = arrow_filesystem(stored, loop_config.get("s3_endpoint_url"))
    stored = ray.train.Checkpoint(path=path, filesystem=fs)
    damaged = set(loop_config.get("damaged_checkpoints") or ())
    if (latest is not None and posixpath.basename(latest.path.rstrip("/")) not in damaged
            and _checkpoint_step(latest) > _checkpoint_step(stored)):
        return latest
    return stored


def _checkpoint_step(checkpoint) -> int:
    """The step of a Ray checkpoint (its progress.json); -1 when unreadable."""
    import json

    try:
        with checkpoint.filesystem.open_input_stream(posixpath.join(checkpoint.path, PROGRESS)) as f:
            return int(json.loads(f.read())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def _read_checkpoint(checkpoint, rank: int) -> dict:
    with checkpoint.as_directory() as folder:
        restored = {
            "weights": torch.load(os.path.join(folder, WEIGHTS), map_location="cpu",
                                  weights_only=True),
            "state": torch.load(os.path.join(folder, STATE), map_location="cpu",
                                weights_only=True),
        }
        worker_file = os.path.join(folder, f"worker_{rank}.pt")
        if os.path.exists(worker_file):  # absent when the number of workers grew
            restored["worker"] = torch.load(worker_file, map_location="cpu", weights_only=True)
    return restored


def _load_weights(nets: dict[str, nn.Module], weights: dict) -> None:
    missing = set(nets) - set(weights)
    if missing:
        raise ValueError(f"checkpoint has no weights for {sorted(missing)} "
                         f"(it holds {sorted(weights)})")
    for name, net in nets.items():
        try:
            net.load_state_dict(weights[name])
        except RuntimeError as err:
            raise ValueError(f"checkpoint weights for {name} do not fit this architecture "
                             f"(ngf/ndf/n_blocks/norm differ?): {err}") from err


LOG_INTERVAL_S = 30.0  # a progress line about this often when --log-every is not given


def _log_due(log_every: int | None, step: int, last_log_time: float) -> bool:
    if log_every is not None:
        return step % log_every == 0
    return time.perf_counter() - last_log_time >= LOG_INTERVAL_S


def _say(message: str) -> None:
    # Not print(): Ray Train patches print to also log, which shows every line twice.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _tuple_state(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _replicas_in_sync(nets: dict[str, nn.Module], world: int) -> bool:
    """Do all workers hold bit-identical parameters?  (A collective: every rank calls it.)"""
    import torch.distributed as dist

    digest = hashlib.sha256()
    for name in sorted(nets):
        for p in nets[name].parameters():
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    digests: list = [None] * world
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


@torch.no_grad()
def _save_preview(log, generator: nn.Module, preview, step: int, steps_per_epoch: int,
                  autocast) -> None:
    bass, drums = preview
    was_training = generator.training
    generator.eval()
    with autocast():
        fake = generator(bass)
    generator.train(was_training)
    as_images = [model_to_image(t[:, 0].float()).cpu().numpy() for t in (bass, drums, fake)]
    epoch = step // steps_per_epoch - 1
    log.save_preview(f"preview_epoch{epoch:03d}_step{step:09d}.png", *as_images,
                     title=f"epoch {epoch}, step {step}: bass | true drums | generated drums")
