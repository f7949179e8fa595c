"""Ray Train wiring: data set, run folder, resume rules, then `TorchTrainer.fit()`.

RUN_DIR (local or s3://) holds one Ray Train run named `train`
(RUN_DIR/train/checkpoint_<step>/...) and the logs (RUN_DIR/logs/).  Ray Train
resumes a run when `fit()` is called again with the same name and storage path,
so a RUN_DIR that already holds checkpoints is only reused with `resume=True`.
"""
from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field

from cluster.errors import UserError

from pipelines.mel import MelParams
from pipelines.paths import check_output_outside_inputs
from pipelines.storage import arrow_filesystem, is_remote, local_path_resolved, storage_errors
from pipelines.windows import mel_params_from_schema
from train.checkpoint import (CheckpointCorruptError, list_checkpoints, read_progress,
                              resolve_checkpoint, usable_checkpoint)
from train.config import FIXED, FREE, TrainConfig, options_where

log = logging.getLogger(__name__)

RUN_NAME = "train"
# Both read off the options' metadata in train/config.py, the one place they are defined.
ARCHITECTURE_FIELDS = options_where(architecture=True)
# What may change when a run is resumed; FIXED options must match the saved config.
RUN_CONTROL_FIELDS = options_where(on_resume=FREE)
_FIXED_FIELDS = options_where(on_resume=FIXED)
WINDOW_COLUMNS = ("split", "bass", "drums")


class TrainSetupError(UserError):
    """The run cannot start as asked (bad data, RUN_DIR state, conflicting options)."""


@dataclass
class DataSummary:
    mel_params: MelParams
    train_windows: int


@dataclass
class TrainSummary:
    run_dir: str
    checkpoint: str
    step: int
    total_steps: int
    metrics: dict
    resources: dict = field(default_factory=dict)  # device and where the workers ran


def inspect_data(data: str, s3_endpoint_url: str | None = None) -> DataSummary:
    """Mel parameters and the number of train windows, read with pyarrow (cheap)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, path = arrow_filesystem(data, s3_endpoint_url)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise TrainSetupError(f"no window data at {data}")
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
    except pa.ArrowInvalid as err:
        raise TrainSetupError(f"{data} is not a Parquet window set: {err}") from err
    if not dataset.files:
        raise TrainSetupError(f"no Parquet files under {data}")
    try:
        params = mel_params_from_schema(dataset.schema)
    except ValueError as err:
        raise TrainSetupError(f"{data}: {err}") from err
    missing = [c for c in WINDOW_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise TrainSetupError(f"{data}: window table lacks columns {missing}")
    n = dataset.count_rows(filter=pc.field("split") == "train")
    return DataSummary(params, n)


def plan_config(options: dict, run_dir: str, resume: bool,
                s3_endpoint_url: str | None = None) -> tuple[TrainConfig, dict | None]:
    """The run's TrainConfig from explicit options (None = unset) and what RUN_DIR holds.

    Returns (config, saved config of the checkpoint resumed from or None).
    """
    config, saved, _ = _plan(options, run_dir, resume, s3_endpoint_url)
    return config, saved


def _plan(options: dict, run_dir: str, resume: bool, s3_endpoint_url: str | None):
    """(config, saved config or None, resume checkpoint or None): see `plan_config`."""
    options = {k: v for k, v in options.items() if v is not None}
    existing = list_checkpoints(run_dir, s3_endpoint_url)
    if existing and not resume:
        raise TrainSetupError(
            f"{run_dir} already holds a training run (latest checkpoint {existing[-1]}); "
            "pass --resume to continue it or choose a new RUN_DIR")
    if resume:
        if not existing:
            raise TrainSetupError(f"--resume: no checkpoint in {run_dir} to resume from")
        # The newest checkpoint that is complete ON STORAGE, not the newest Ray's run
        # snapshot lists: a driver killed right after a checkpoint was persisted leaves a
        # snapshot one or more checkpoints behind.  Damaged ones are skipped with a warning.
        try:
            checkpoint, saved, skipped = usable_checkpoint(run_dir, s3_endpoint_url)
        except CheckpointCorruptError as err:
            raise TrainSetupError(f"--resume: {err}; start a new RUN_DIR (--init-from can "
                                  "reuse weights of a readable checkpoint)") from err
        config = TrainConfig.from_dict(saved)
        for key, value in options.items():
            if key in RUN_CONTROL_FIELDS:
                setattr(config, key, value)
            elif key in _FIXED_FIELDS and getattr(config, key) != value:
                raise TrainSetupError(
                    f"--resume: option {key}={value!r} differs from the run's saved {key}="
                    f"{getattr(config, key)!r}; only run-control options may change")
        if "epochs" in options and "max_steps" not in options:
            config.max_steps = None  # the run's length is now given in epochs
        damaged = [posixpath.basename(c.rstrip("/")) for c, _ in skipped]
        return config.resolved(), saved, (checkpoint, damaged)
    if options.get("init_from"):
        # Fine-tuning: the architecture comes from the source run unless stated.
        source = _init_source(options["init_from"], s3_endpoint_url)[1]
        for key in ARCHITECTURE_FIELDS:
            if key in options and options[key] != source.get(key):
                raise TrainSetupError(
                    f"--init-from: {key}={options[key]!r} differs from the source run's "
                    f"{key}={source.get(key)!r}")
            options[key] = source.get(key)
    return TrainConfig(**options).resolved(), None, (None, [])


def _init_source(init_from: str, s3_endpoint_url: str | None) -> tuple[str, dict]:
    """(checkpoint, config) that --init-from names, read completely now (weights only)."""
    try:
        checkpoint, config, _ = usable_checkpoint(init_from, s3_endpoint_url, with_state=False)
    except CheckpointCorruptError as err:
        raise TrainSetupError(f"--init-from: {err}") from err
    return checkpoint, config


def build_datasets(data: str, cfg: TrainConfig, s3_endpoint_url: str | None = None) -> dict:
    """Ray Data sets of train windows, one per stream the worker loop reads."""
    import ray.data
    from ray.data.expressions import col

    fs, path = arrow_filesystem(data, s3_endpoint_url)
    windows = ray.data.read_parquet(path, filesystem=fs).select_columns(list(WINDOW_COLUMNS))
    windows = windows.filter(expr=col("split") == "train")

    def shuffled(ds):
        # full: a new global order every epoch; local: block order + a buffer in the worker.
        ds = ds.random_shuffle() if cfg.shuffle == "full" else ds.randomize_block_order()
        # These pipelines run inside Ray Train, once per epoch and stream: their progress
        # bars would print from the split coordinator on every pass.  Training reports its
        # own progress (steps, rate, ETA) instead.
        ds.context.enable_progress_bars = False
        ds.context.enable_operator_progress_bars = False
        return ds

    if not cfg.paired_batches:
        # Unpaired, as the paper's CycleGAN trains: bass and drums are drawn independently.
        return {"bass": shuffled(windows.select_columns(["bass"])),
                "drums": shuffled(windows.select_columns(["drums"]))}
    return {"pairs": shuffled(windows.select_columns(["bass", "drums"]))}


@dataclass
class RunPlan:
    """Everything `train` checked before Ray starts (paths resolved, config, run length)."""
    data: str
    run_dir: str
    config: TrainConfig
    mel_params: MelParams
    data_summary: DataSummary
    steps_per_epoch: int
    total_steps: int
    resume_checkpoint: str | None  # the storage checkpoint a --resume continues from
    damaged_checkpoints: list[str]  # names of newer checkpoints skipped as unreadable


def preflight(data: str, run_dir: str, options: dict, *, num_workers: int = 1,
              resume: bool = False, s3_endpoint_url: str | None = None) -> RunPlan:
    """Check DATA, RUN_DIR, the options and any checkpoint involved; no Ray needed.

    Local paths come back absolute: Ray Train workers run in a folder of their own, where a
    relative RUN_DIR would put the logs and previews somewhere else.
    """
    if num_workers < 1:
        raise TrainSetupError("--num-workers must be at least 1")
    data, run_dir = local_path_resolved(data), local_path_resolved(run_dir)
    check_output_outside_inputs(run_dir, {"DATA": data, "--init-from": options.get("init_from")},
                                what="RUN_DIR")
    if not is_remote(run_dir) and os.path.isfile(run_dir):
        raise TrainSetupError(f"RUN_DIR {run_dir} is an existing file; give a folder")
    with storage_errors("reading", data):
        data_summary = inspect_data(data, s3_endpoint_url)
    with storage_errors("reading the run in", run_dir):
        cfg, saved, (resume_checkpoint, damaged) = _plan(options, run_dir, resume, s3_endpoint_url)
    params = data_summary.mel_params
    if saved is not None and MelParams.from_dict(saved["mel_params"]) != params:
        raise TrainSetupError("--resume: the data's mel parameters differ from the run's")
    if cfg.init_from and saved is None:
        _, source = _init_source(cfg.init_from, s3_endpoint_url)
        if MelParams.from_dict(source["mel_params"]) != params:
            raise TrainSetupError(
                f"--init-from: {cfg.init_from} was trained on different mel parameters "
                f"than {data} ({source['mel_params']} vs {params.to_dict()})")
    if cfg.model == "pix2pix" and (params.n_mels % 2 ** cfg.unet_downs
                                   or params.window_frames % 2 ** cfg.unet_downs):
        raise TrainSetupError(f"pix2pix with unet_downs={cfg.unet_downs} needs windows whose "
                              f"sides divide by {2 ** cfg.unet_downs}")
    steps_per_epoch = data_summary.train_windows // num_workers // cfg.batch_size
    if steps_per_epoch < 1:
        raise TrainSetupError(
            f"{data} has {data_summary.train_windows} train windows: too few for "
            f"{num_workers} workers x batch {cfg.batch_size}")
    return RunPlan(data, run_dir, cfg, params, data_summary, steps_per_epoch,
                   cfg.total_steps(steps_per_epoch), resume_checkpoint, damaged)


def train(data: str, run_dir: str, options: dict, *, num_workers: int = 1, device: str = "cpu",
          cpus_per_worker: float = 1.0, resume: bool = False, max_failures: int = 3,
          s3_endpoint_url: str | None = None, placements=None, on_step=None,
          plan: RunPlan | None = None) -> TrainSummary:
    """Train (or resume) a run in RUN_DIR on the windows in DATA.  Ray must be initialised.

    `device` and `placements` come from cluster.resources.plan_workers (the shared policy);
    the caller, which made the book, ends it (`ending_placement_books`).

    `plan` is what `preflight` returned for the same arguments (the CLI checks before it
    starts Ray); without it the checks run here.

    `on_step(rank=, step=, resumed=)`, when given, is called on every worker before each
    optimizer step (1-based): a hook for observers and for tests that inject faults.
    It is not part of the run's config and never reaches a checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from cluster.loopback_torch import LoopbackTorchConfig
    from cluster.node_watch import watching_nodes
    from cluster.placement import read_placements, train_backend
    from train.interrupt import InterruptibleTorchTrainer  # Ctrl-C: exit 130, "interrupted"
    from train.loop import train_loop_per_worker
    from train.run_lock import run_lock

    plan = plan or preflight(data, run_dir, options, num_workers=num_workers, resume=resume,
                             s3_endpoint_url=s3_endpoint_url)
    data, run_dir, cfg, params = plan.data, plan.run_dir, plan.config, plan.mel_params
    steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps
    data_summary = plan.data_summary

    # One run at a time in RUN_DIR (train/run_lock.py): held until this run ends, finished or failed.
    with run_lock(run_dir, s3_endpoint_url):
        storage_fs, storage_path = arrow_filesystem(run_dir, s3_endpoint_url)
        use_gpu = device == "cuda"
        resources = {"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
        backend = train_backend(device)
        trainer = InterruptibleTorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": cfg.to_dict(), "mel_params": params.to_dict(),
                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "run_dir": run_dir, "s3_endpoint_url": s3_endpoint_url,
                "cpus_per_worker": cpus_per_worker, "resume_checkpoint": plan.resume_checkpoint,
                "damaged_checkpoints": plan.damaged_checkpoints, "on_step": on_step,
                "placements": placements,
            },
            torch_config=LoopbackTorchConfig(backend=backend),  # 127.0.0.1 on a local Ray
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=RUN_NAME,
                storage_path=storage_path,
                storage_filesystem=storage_fs if is_remote(run_dir) else None,
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=FailureConfig(max_failures=max_failures),
            ),
            datasets=build_datasets(data, cfg, s3_endpoint_url),
        )
        log.info("training %s: %d train windows, %d workers, %d steps/epoch, %d steps",
                 cfg.model, data_summary.train_windows, num_workers, steps_per_epoch, total_steps)
        with watching_nodes("train") as watch:  # Ray Train restarts the group itself; the console says why
            result = trainer.fit()
        if result.error:
            raise result.error
        entries = read_placements(placements)
        checkpoint = resolve_checkpoint(run_dir, s3_endpoint_url)
        step = int(read_progress(checkpoint, s3_endpoint_url)["step"])
        resources = dict(_resources_summary(device, num_workers, cpus_per_worker, entries),
                         nodes_lost=watch.summary())
        _write_resources(run_dir, resources, s3_endpoint_url)
        return TrainSummary(run_dir=run_dir, checkpoint=checkpoint, step=step,
                            total_steps=total_steps, metrics=dict(result.metrics or {}),
                            resources=resources)


def _resources_summary(device: str, num_workers: int, cpus_per_worker: float, entries: list[dict]) -> dict:
    return {"device": device, "workers": num_workers, "cpus_per_worker": cpus_per_worker,
            "nodes": sorted({e["node_id"] for e in entries}),
            "gpu_ids": sorted({g for e in entries for g in e["gpu_ids"]}),
            "cpu_standin": any(e["cpu_standin"] for e in entries), "placements": entries}


def _write_resources(run_dir: str, resources: dict, s3_endpoint_url: str | None) -> None:
    """RUN_DIR/logs/resources.json: this invocation's device and worker placements."""
    import json

    from pipelines.storage import write_bytes
    from train.runlog import LOG_DIR

    write_bytes(posixpath.join(run_dir.rstrip("/"), LOG_DIR, "resources.json"),
                json.dumps(resources, indent=2).encode(), s3_endpoint_url)


def run_folder(run_dir: str) -> str:
    return posixpath.join(run_dir.rstrip("/"), RUN_NAME)
