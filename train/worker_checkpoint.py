"""A training worker's side of checkpoints: which one to restore, reading it, saving one.

Every worker writes `worker_<rank>.pt` (its image pools and RNG states) into the same
checkpoint; rank 0 adds the shared files (train/checkpoint.py describes the format).
`ray.train.report` is a barrier, so every worker checkpoints at the same steps.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import random
import tempfile
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from train.checkpoint import PROGRESS, STATE, WEIGHTS, write_checkpoint
from train.runlog import MetricsBuffer, RunLog

if TYPE_CHECKING:
    from train.setup import Optimizers, Runtime, WorkerRun


def save_and_report(step: int, nets: dict[str, nn.Module], opt: Optimizers, run: WorkerRun,
                    rt: Runtime, metrics: MetricsBuffer, log: RunLog | None) -> None:
    """Write this worker's part of the checkpoint at `step` and report it to Ray Train.

    Flushes the metrics first, so the checkpoint's log record follows its steps' records.
    """
    import ray.train

    metrics.flush()
    epoch = step // run.steps_per_epoch
    reported = metrics.report(step, opt.lr())
    if rt.world > 1:
        reported["replicas_in_sync"] = replicas_in_sync(nets, rt.world)
    with tempfile.TemporaryDirectory(prefix="cycledrums-ckpt-") as folder:
        torch.save({"pools": {k: p.state_dict() for k, p in opt.pools.items()},
                    "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()},
                   os.path.join(folder, f"worker_{rt.rank}.pt"))
        if rt.rank == 0:
            write_checkpoint(
                folder,
                weights={name: net.state_dict() for name, net in nets.items()},
                state={"optimizers": {k: o.state_dict() for k, o in opt.optimizers.items()},
                       "schedulers": {k: s.state_dict() for k, s in opt.schedulers.items()},
                       "step": step, "epoch": epoch, "world_size": rt.world},
                config=run.checkpoint_config, step=step, epoch=epoch)
            log.write([{"event": "checkpoint", **reported, "time": time.time()}])
            log.sync()
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"checkpoint_{step:09d}")


def replicas_in_sync(nets: dict[str, nn.Module], world: int) -> bool:
    """Do all workers hold bit-identical parameters?  (A collective: every rank calls it.)"""
    import torch.distributed as dist

    digest = hashlib.sha256()
    for name in sorted(nets):
        for p in nets[name].parameters():
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    digests: list = [None] * world
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def read_restore_point(loop_config: dict, rank: int) -> dict | None:
    """The checkpoint this worker starts from ({"weights", "state", "worker"?}), None if none."""
    import ray.train

    checkpoint = checkpoint_to_restore(ray.train.get_checkpoint(), loop_config)
    return read_checkpoint(checkpoint, rank) if checkpoint else None


def checkpoint_to_restore(latest, loop_config: dict):
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


def read_checkpoint(checkpoint, rank: int) -> dict:
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


def load_weights(nets: dict[str, nn.Module], weights: dict) -> None:
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


def python_rng_state(state) -> tuple:
    """random.getstate() as random.setstate() takes it (torch.load gives lists for tuples)."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
