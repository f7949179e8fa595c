"""A training worker's input: its shard(s) of the train windows as model tensors.

Each batch is decoded from the window table's PNG bytes into [batch, 1, mels, frames]
tensors on the worker's device, scaled to the model's range (pipelines/mel.py).
"""
from __future__ import annotations

import numpy as np
import torch

from pipelines.mel import MelParams, image_to_model
from pipelines.windows import binary_to_images
from train.config import TrainConfig


def epoch_batches(cfg: TrainConfig, params: MelParams, device: torch.device, channels_last: bool,
                  epoch: int, rank: int):
    """(bass, drums) model tensors [batch, 1, mels, frames] for one pass over this worker's shard."""
    import ray.train

    if not cfg.paired_batches:  # the paper's CycleGAN: two independently shuffled streams
        bass = window_stream(ray.train.get_dataset_shard("bass"), "bass", cfg, params,
                             device, channels_last, seed=(cfg.seed, epoch, rank, 1))
        drums = window_stream(ray.train.get_dataset_shard("drums"), "drums", cfg, params,
                              device, channels_last, seed=(cfg.seed, epoch, rank, 2))
        return zip(bass, drums)
    return pair_stream(ray.train.get_dataset_shard("pairs"), cfg, params, device,
                       channels_last, seed=(cfg.seed, epoch, rank, 3))


def iter_arrow(shard, cfg: TrainConfig, seed: tuple):
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


def window_stream(shard, column: str, cfg, params, device, channels_last, seed):
    for batch in iter_arrow(shard, cfg, seed):
        yield _to_model(batch.column(column), params, device, channels_last)


def pair_stream(shard, cfg, params, device, channels_last, seed):
    for batch in iter_arrow(shard, cfg, seed):
        yield (_to_model(batch.column("bass"), params, device, channels_last),
               _to_model(batch.column("drums"), params, device, channels_last))
