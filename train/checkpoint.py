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

import json
import logging
import os
import posixpath

import torch

from cluster.errors import UserError

from pipelines.mel import MelParams
from pipelines.storage import fsspec_filesystem, read_bytes, retried_read

WEIGHTS = "weights.pt"
STATE = "state.pt"
CONFIG = "config.json"
PROGRESS = "progress.json"
REQUIRED = (WEIGHTS, STATE, CONFIG)


log = logging.getLogger(__name__)


class CheckpointCorruptError(UserError):
    """A checkpoint file that cannot be read (truncated, not torch's format, not JSON...)."""


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
    path = posixpath.join(checkpoint_path, PROGRESS)
    try:  # retried as a whole when the body is cut short
        return int(json.loads(retried_read("reading", fs.unstrip_protocol(path), lambda: fs.cat_file(path)))["step"])
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
    """The checkpoint's config.json (CheckpointCorruptError naming the file when it is not JSON)."""
    try:
        return _load_file(checkpoint, CONFIG, s3_endpoint_url)
    except CheckpointCorruptError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            raise err.__cause__
        raise


def read_progress(checkpoint: str, s3_endpoint_url: str | None = None) -> dict:
    return json.loads(read_bytes(posixpath.join(checkpoint, PROGRESS), s3_endpoint_url))


def read_weights(checkpoint: str, s3_endpoint_url: str | None = None) -> dict:
    return _load_file(checkpoint, WEIGHTS, s3_endpoint_url)


def read_state(checkpoint: str, s3_endpoint_url: str | None = None) -> dict:
    return _load_file(checkpoint, STATE, s3_endpoint_url)


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


# ----------------------------------------------------------------- validation (pre-flight)

def _load_file(checkpoint: str, name: str, s3_endpoint_url: str | None):
    from pipelines.model_files import UnsafeModelFileError, safe_torch_load

    uri = posixpath.join(checkpoint, name)
    try:
        data = read_bytes(uri, s3_endpoint_url)
    except FileNotFoundError as err:
        raise CheckpointCorruptError(f"{uri}: missing") from err
    if name.endswith(".json"):
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointCorruptError(f"{uri}: not valid JSON ({err})") from err
    try:
        return safe_torch_load(data, name=uri)
    except UnsafeModelFileError as err:
        raise CheckpointCorruptError(str(err)) from err


def validate_checkpoint(checkpoint: str, s3_endpoint_url: str | None = None,
                        with_state: bool = True) -> dict:
    """Read every file of a checkpoint the way the jobs will; returns its config.

    Raises CheckpointCorruptError naming the first bad file.
    """
    config = _load_file(checkpoint, CONFIG, s3_endpoint_url)
    if not isinstance(config, dict) or "mel_params" not in config:
        raise CheckpointCorruptError(f"{posixpath.join(checkpoint, CONFIG)}: records no mel_params")
    try:
        MelParams.from_dict(config["mel_params"])
    except (TypeError, ValueError) as err:
        raise CheckpointCorruptError(f"{posixpath.join(checkpoint, CONFIG)}: bad mel_params ({err})") from err
    weights = _load_file(checkpoint, WEIGHTS, s3_endpoint_url)
    if not isinstance(weights, dict) or "gen_bass_to_drums" not in weights:
        raise CheckpointCorruptError(f"{posixpath.join(checkpoint, WEIGHTS)}: holds no gen_bass_to_drums weights")
    if with_state:
        _load_file(checkpoint, STATE, s3_endpoint_url)
    return config


def usable_checkpoint(path: str, s3_endpoint_url: str | None = None,
                      with_state: bool = True) -> tuple[str, dict, list[tuple[str, str]]]:
    """(checkpoint, its config, [(skipped checkpoint, why)]) for a checkpoint or run folder.

    A checkpoint folder must be readable (else CheckpointCorruptError).  A run folder gives
    its newest checkpoint that reads completely: newer ones that are damaged (a crash while
    they were written, a bad disk) are skipped with a warning that names the bad file.
    """
    fs, fs_path = fsspec_filesystem(path, s3_endpoint_url)
    if _is_checkpoint(fs, fs_path.rstrip("/")):
        return path, validate_checkpoint(path, s3_endpoint_url, with_state), []
    found = list_checkpoints(path, s3_endpoint_url)
    if not found:
        resolve_checkpoint(path, s3_endpoint_url)  # raises CheckpointNotFoundError, with the hint
    skipped = []
    for checkpoint in reversed(found):
        try:
            config = validate_checkpoint(checkpoint, s3_endpoint_url, with_state)
        except CheckpointCorruptError as err:
            log.warning("skipping damaged checkpoint: %s", err)
            skipped.append((checkpoint, str(err)))
            continue
        if skipped:
            log.warning("using %s, the newest complete checkpoint in %s", checkpoint, path)
        return checkpoint, config, skipped
    raise CheckpointCorruptError(
        f"no readable checkpoint in {path}: " + "; ".join(why for _, why in skipped))
