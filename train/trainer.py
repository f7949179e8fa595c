"""Ray Train wiring: data set, run folder, resume rules, then `TorchTrainer.fit()`.

RUN_DIR (local or s3://) holds one Ray Train run named `train`
(RUN_DIR/train/checkpoint_<step>/...) and the logs (RUN_DIR/logs/).  Ray Train
resumes a run when `fit()` is called again with the same name and storage path,
so a RUN_DIR that already holds checkpoints is only reused with `resume=True`.
"""
from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field

from pipelines.mel import MelParams
from pipelines.storage import arrow_filesystem, is_remote
from pipelines.windows import mel_params_from_schema
from train.checkpoint import list_checkpoints, read_config, read_progress, resolve_checkpoint
from train.config import TrainConfig

log = logging.getLogger(__name__)

RUN_NAME = "train"
ARCHITECTURE_FIELDS = ("model", "ngf", "ndf", "n_blocks", "n_layers_d", "unet_downs", "norm",
                       "dropout")
# What may change when a run is resumed; everything else must match the saved config.
RUN_CONTROL_FIELDS = ("epochs", "max_steps", "stop_after_steps", "checkpoint_every",
                      "keep_checkpoints", "log_every", "images_per_epoch", "precision",
                      "channels_last", "compile", "crash_at_step", "crash_rank",
                      "shuffle_buffer")
WINDOW_COLUMNS = ("split", "bass", "drums")


class TrainSetupError(ValueError):
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
    options = {k: v for k, v in options.items() if v is not None}
    existing = list_checkpoints(run_dir, s3_endpoint_url)
    if existing and not resume:
        raise TrainSetupError(
            f"{run_dir} already holds a training run (latest checkpoint {existing[-1]}); "
            "pass --resume to continue it or choose a new RUN_DIR")
    if resume:
        if not existing:
            raise TrainSetupError(f"--resume: no checkpoint in {run_dir} to resume from")
        saved = read_config(existing[-1], s3_endpoint_url)
        config = TrainConfig.from_dict(saved)
        for key, value in options.items():
            if key in RUN_CONTROL_FIELDS:
                setattr(config, key, value)
            elif key != "init_from" and getattr(config, key) != value:
                raise TrainSetupError(
                    f"--resume: option {key}={value!r} differs from the run's saved {key}="
                    f"{getattr(config, key)!r}; only run-control options may change")
        if "epochs" in options and "max_steps" not in options:
            config.max_steps = None  # the run's length is now given in epochs
        return config.resolved(), saved
    if options.get("init_from"):
        # Fine-tuning: the architecture comes from the source run unless stated.
        source = read_config(resolve_checkpoint(options["init_from"], s3_endpoint_url),
                             s3_endpoint_url)
        for key in ARCHITECTURE_FIELDS:
            if key in options and options[key] != source.get(key):
                raise TrainSetupError(
                    f"--init-from: {key}={options[key]!r} differs from the source run's "
                    f"{key}={source.get(key)!r}")
            options[key] = source.get(key)
    return TrainConfig(**options).resolved(), None


def build_datasets(data: str, cfg: TrainConfig, s3_endpoint_url: str | None = None) -> dict:
    """Ray Data sets of train windows, one per stream the worker loop reads."""
    import ray.data
    from ray.data.expressions import col

    fs, path = arrow_filesystem(data, s3_endpoint_url)
    windows = ray.data.read_parquet(path, filesystem=fs).select_columns(list(WINDOW_COLUMNS))
    windows = windows.filter(expr=col("split") == "train")

    def shuffled(ds):
        # full: a new global order every epoch; local: block order + a buffer in the worker.
        return ds.random_shuffle() if cfg.shuffle == "full" else ds.randomize_block_order()

    if cfg.model == "cyclegan":
        # Unpaired, as CycleGAN requires: bass and drums are drawn independently.
        return {"bass": shuffled(windows.select_columns(["bass"])),
                "drums": shuffled(windows.select_columns(["drums"]))}
    return {"pairs": shuffled(windows.select_columns(["bass", "drums"]))}


def train(data: str, run_dir: str, options: dict, *, num_workers: int = 1, device: str = "cpu",
          cpus_per_worker: float = 1.0, resume: bool = False, max_failures: int = 3,
          s3_endpoint_url: str | None = None, placements=None) -> TrainSummary:
    """Train (or resume) a run in RUN_DIR on the windows in DATA.  Ray must be initialised.

    `device` and `placements` come from cluster.resources.plan_workers (the shared policy).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.resources import read_placements, train_backend

    from train.loop import train_loop_per_worker

    if num_workers < 1:
        raise TrainSetupError("--num-workers must be at least 1")
    data_summary = inspect_data(data, s3_endpoint_url)
    cfg, saved = plan_config(options, run_dir, resume, s3_endpoint_url)
    params = data_summary.mel_params
    if saved is not None and MelParams.from_dict(saved["mel_params"]) != params:
        raise TrainSetupError("--resume: the data's mel parameters differ from the run's")
    if cfg.init_from and saved is None:
        source = read_config(resolve_checkpoint(cfg.init_from, s3_endpoint_url), s3_endpoint_url)
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
    total_steps = cfg.total_steps(steps_per_epoch)

    storage_fs, storage_path = arrow_filesystem(run_dir, s3_endpoint_url)
    use_gpu = device == "cuda"
    resources = {"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    backend = train_backend(device)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(), "mel_params": params.to_dict(),
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
            "run_dir": run_dir, "s3_endpoint_url": s3_endpoint_url,
            "cpus_per_worker": cpus_per_worker, "placements": placements,
        },
        torch_config=TorchConfig(backend=backend) if backend else None,
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
    result = trainer.fit()
    if result.error:
        raise result.error
    checkpoint = resolve_checkpoint(run_dir, s3_endpoint_url)
    step = int(read_progress(checkpoint, s3_endpoint_url)["step"])
    resources = _resources_summary(device, num_workers, cpus_per_worker, read_placements(placements))
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
