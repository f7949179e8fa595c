"""The per-worker training loop: what every Ray Train worker runs.

`train_loop_per_worker` reads top to bottom: set up the device and precision, read
the checkpoint to restore (this run's latest, if any), build the networks (restored
weights, else `init_from`'s, wrapped for DDP) and optimisers, restore the training
state, then step through the worker's data shard, logging, checkpointing and
drawing previews on the way.

The set-up steps are in train/setup.py, the update rules (`cyclegan_step`,
`pix2pix_step`) in train/steps.py, the input streams in train/batches.py, saving
and restoring checkpoints in train/worker_checkpoint.py, the metrics buffer in
train/runlog.py.  `ray.train.report` is a barrier, so every worker checkpoints at
the same steps (all shards hold the same number of batches per epoch: Ray Train
splits the data with equal=True).
"""
from __future__ import annotations

import itertools
import time

import torch
from torch import nn

from pipelines.mel import MelParams, model_to_image
from train.batches import epoch_batches
from train.runlog import MetricsBuffer, RunLog
from train.config import TrainConfig
from train.setup import (Nets, Optimizers, Runtime, WorkerRun, build_models, build_optimizers,
                         open_run_log, restore, setup_device_and_precision)
from train.steps import LOSS_NAMES, cyclegan_step, pix2pix_step
from train.worker_checkpoint import read_restore_point, save_and_report


def train_loop_per_worker(loop_config: dict) -> None:
    run = WorkerRun.from_loop_config(loop_config)
    cfg, steps_per_epoch = run.cfg, run.steps_per_epoch
    rt = setup_device_and_precision(run)
    restored = read_restore_point(loop_config, rt.rank)
    nets = build_models(run, rt, restored)
    opt = build_optimizers(nets.raw, run, rt.rank)
    step = restore(opt, restored, run, rt)
    log = open_run_log(run, rt, step, resumed=restored is not None)
    stop_at = run.stop_at(step)
    metrics = MetricsBuffer(log, LOSS_NAMES[cfg.model], samples_per_step=cfg.batch_size * rt.world,
                            steps_per_epoch=steps_per_epoch, total_steps=run.total_steps,
                            stop_at=stop_at, log_every=cfg.log_every)
    preview = PreviewWindows(cfg.images_per_epoch if rt.rank == 0 else 0, run.params, rt.device)
    on_step = loop_config.get("on_step")  # an observer given to train(), e.g. a test's fault
    last_checkpoint_step = step if restored else -1

    while step < stop_at:
        epoch = step // steps_per_epoch
        wanted = min(steps_per_epoch - step % steps_per_epoch, stop_at - step)
        taken = 0
        batches = epoch_batches(cfg, run.params, rt.device, rt.channels_last, epoch, rt.rank)
        for bass, drums in itertools.islice(batches, wanted):
            if on_step is not None:
                on_step(rank=rt.rank, step=step + 1, resumed=restored is not None)
            preview.collect(bass, drums)
            lr = opt.lr()
            losses = train_step(bass, drums, nets, opt, cfg, rt)
            step += 1
            taken += 1
            metrics.add(step, lr, losses)
            if metrics.due(step):
                metrics.flush()
            if step % cfg.checkpoint_every == 0 and step < stop_at:
                save_and_report(step, nets.raw, opt, run, rt, metrics, log)
                last_checkpoint_step = step
        if taken < wanted:
            raise RuntimeError(f"rank {rt.rank}: data shard ended after {taken} of {wanted} "
                               f"batches in epoch {epoch}; workers would fall out of step")
        if step % steps_per_epoch == 0 and preview.windows:
            preview.save(log, nets.raw["gen_bass_to_drums"], step, steps_per_epoch, rt)
    if last_checkpoint_step != step:
        save_and_report(step, nets.raw, opt, run, rt, metrics, log)
    metrics.flush()
    if log is not None:
        log.write([{"event": "end", "step": step, "time": time.time()}])
        log.close()


def train_step(bass: torch.Tensor, drums: torch.Tensor, nets: Nets, opt: Optimizers,
               cfg: TrainConfig, rt: Runtime) -> dict[str, torch.Tensor]:
    """One update of the run's model, then one step of the lr schedules; the update's losses."""
    if cfg.model == "cyclegan":
        losses = cyclegan_step(bass, drums, nets.wrapped, nets.plain, opt.optimizers, opt.pools,
                               cfg, rt.autocast)
    else:
        losses = pix2pix_step(bass, drums, nets.wrapped, nets.plain, opt.optimizers, cfg,
                              rt.autocast)
    opt.step_schedulers()
    return losses


class PreviewWindows:
    """The run's first `wanted` (bass, drums) windows, drawn through the generator each epoch.

    Only rank 0 draws previews: the other workers keep none (`wanted` 0).
    """

    def __init__(self, wanted: int, params: MelParams, device: torch.device):
        self.wanted = wanted
        self.bass = self.drums = torch.empty(0, 1, params.n_mels, params.window_frames,
                                             device=device)

    @property
    def windows(self) -> int:
        return len(self.bass)

    def collect(self, bass: torch.Tensor, drums: torch.Tensor) -> None:
        if len(self.bass) < self.wanted:
            self.bass = torch.cat([self.bass, bass])[:self.wanted]
            self.drums = torch.cat([self.drums, drums])[:self.wanted]

    @torch.no_grad()
    def save(self, log: RunLog, generator: nn.Module, step: int, steps_per_epoch: int,
             rt: Runtime) -> None:
        was_training = generator.training
        generator.eval()
        with rt.autocast():
            fake = generator(self.bass)
        generator.train(was_training)
        as_images = [model_to_image(t[:, 0].float()).cpu().numpy()
                     for t in (self.bass, self.drums, fake)]
        epoch = step // steps_per_epoch - 1
        log.save_preview(f"preview_epoch{epoch:03d}_step{step:09d}.png", *as_images,
                         title=f"epoch {epoch}, step {step}: bass | true drums | generated drums")
