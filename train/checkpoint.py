"""The checkpoint format, and loading a trained generator without Ray.

A checkpoint is a directory (a Ray Train checkpoint folder) holding:

- `weights.pt`   {network key: plain state dict}; `torch.load(path, weights_only=True)`
                 works.  CycleGAN keys: gen_bass_to_drums, gen_drums_to_bass,
                 critic_bass, critic_drums.  Pix2Pix: gen_bass_to_drums, critic_drums.
- `state.pt`     optimizers, schedulers, the image pools of every worker, step and
                 epoch counters (also plain tensors/containers: weights_only works).
- `config.json`  the full TrainConfig plus `mel_params` (MelParams.to_dict() of the
                 training data) and the run's `steps_per_epoch` / `total_steps`.
- `progress.json` {"step", "epoch"}: lets a reader pick the latest checkpoint cheaply.

A run folder (RUN_DIR) holds Ray Train's run folder(s), each with its
checkpoint folders; `resolve_checkpoint(RUN_DIR)` finds the latest complete one.
Paths may be local or `s3://`.
"""
from __future__ import annotations

import io
import json
import os
import posixpath

import torch

from cycledrums_cli import UserError

from pipelines.mel import MelParams
from pipelines.storage import fsspec_filesystem, read_bytes

WEIGHTS = "weights.pt"
STATE = "state.pt"
CONFIG = "config.json"
PROGRESS = "progress.json"
REQUIRED = (WEIGHTS, STATE, CONFIG)


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """No checkpoint where one was asked for (a user error; still a FileNotFoundError)."""


def write_checkpoint(directory: str, weights: dict, state: dict, config: dict, step: int,
                     epoch: int) -> None:
    """Write one checkpoint into a local directory (Ray then persists it to storage)."""
    if "mel_params" not in config:
        raise ValueError("a checkpoint config must record the data's mel_params")
    os.makedirs(directory, exist_ok=True)
    torch.save(weights, os.path.join(directory, WEIGHTS))
    torch.save(state, os.path.join(directory, STATE))
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    with open(os.path.join(directory, PROGRESS), "w") as f:
        json.dump({"step": step, "epoch": epoch}, f)


def _join(root_uri: str, fs_path: str) -> str:
    """Turn a path inside a filesystem back into a URI of the same kind as `root_uri`."""
    if "://" in root_uri:
        scheme = root_uri.split("://", 1)[0]
        return f"{scheme}://{fs_path}"
    return fs_path


def _is_checkpoint(fs, fs_path: str) -> bool:
    return all(fs.exists(posixpath.join(fs_path, name)) for name in REQUIRED)


def _step_of(fs, checkpoint_path: str) -> int:
    try:
        with fs.open(posixpath.join(checkpoint_path, PROGRESS), "r") as f:
            return int(json.load(f)["step"])
    except (FileNotFoundError, KeyError, ValueError):
        return -1


def list_checkpoints(path: str, s3_endpoint_url: str | None = None) -> list[str]:
    """Complete checkpoint folders under a run folder, oldest first (by step, then name)."""
    fs, root = fsspec_filesystem(path, s3_endpoint_url)
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    found = set()
    # RUN_DIR/<checkpoint>, RUN_DIR/<ray run>/<checkpoint>, and one level more for safety.
    for pattern in ("*/" + WEIGHTS, "*/*/" + WEIGHTS, "*/*/*/" + WEIGHTS):
        for weights in fs.glob(posixpath.join(root, pattern)):
            folder = posixpath.dirname(weights)
            if _is_checkpoint(fs, folder):
                found.add(folder)
    ordered = sorted(found, key=lambda p: (_step_of(fs, p), posixpath.basename(p)))
    return [_join(path, p) for p in ordered]


def resolve_checkpoint(path: str, s3_endpoint_url: str | None = None) -> str:
    """A checkpoint folder -> itself; a run folder -> its latest complete checkpoint."""
    fs, fs_path = fsspec_filesystem(path, s3_endpoint_url)
    fs_path = fs_path.rstrip("/")
    if _is_checkpoint(fs, fs_path):
        return _join(path, fs_path)
    found = list_checkpoints(path, s3_endpoint_url)
    if not found:
        raise CheckpointNotFoundError(
            f"no checkpoint at {path}: expected a checkpoint folder ({', '.join(REQUIRED)}) "
            "or a training run folder that contains one")
    return found[-1]


def read_config(checkpoint: str, s3_endpoint_url: str | None = None) -> dict:
    return json.loads(read_bytes(posixpath.join(checkpoint, CONFIG), s3_endpoint_url))


def read_progress(checkpoint: str, s3_endpoint_url: str | None = None) -> dict:
    return json.loads(read_bytes(posixpath.join(checkpoint, PROGRESS), s3_endpoint_url))


def read_weights(checkpoint: str, s3_endpoint_url: str | None = None,
                 map_location="cpu") -> dict:
    data = read_bytes(posixpath.join(checkpoint, WEIGHTS), s3_endpoint_url)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def read_state(checkpoint: str, s3_endpoint_url: str | None = None, map_location="cpu") -> dict:
    data = read_bytes(posixpath.join(checkpoint, STATE), s3_endpoint_url)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def load_generator(path: str, device: str | torch.device = "cpu",
                   s3_endpoint_url: str | None = None
                   ) -> tuple[torch.nn.Module, MelParams, dict]:
    """(bass->drums generator in eval mode on `device`, the data's MelParams, config dict).

    `path` is a checkpoint folder or a run folder (its latest checkpoint), local or
    s3://.  Needs no running Ray.
    """
    from train.models import build_generator

    checkpoint = resolve_checkpoint(path, s3_endpoint_url)
    config = read_config(checkpoint, s3_endpoint_url)
    if "mel_params" not in config:
        raise ValueError(f"checkpoint {checkpoint} has no mel_params in its {CONFIG}")
    weights = read_weights(checkpoint, s3_endpoint_url)
    generator = build_generator(config)
    generator.load_state_dict(weights["gen_bass_to_drums"])
    generator.to(device).eval()
    return generator, MelParams.from_dict(config["mel_params"]), config
