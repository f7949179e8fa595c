"""generate's pre-flight: every check that needs no Ray, before a job starts.

Options, paths (made absolute), OUTPUT, the checkpoint (its generator loaded once on the
driver, so a broken one is a clear error and not a dead actor) and the inputs (audio files,
or one Parquet window set made with the checkpoint's mel parameters).  Evaluate runs it for
each of its models.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.errors import UserError

if TYPE_CHECKING:
    from infer.generate import GenerateConfig


class GenerateError(UserError):
    """A problem with the job as a whole (bad options, no checkpoint, no inputs)."""


def _checkpoint_info(cfg: GenerateConfig):
    """(checkpoint, config, MelParams): the newest readable checkpoint CHECKPOINT names, loaded once."""
    from pipelines.mel import MelParams
    from train.checkpoint import usable_checkpoint

    checkpoint, config, _ = usable_checkpoint(cfg.checkpoint, cfg.s3_endpoint_url, with_state=False)
    _check_generator_loads(checkpoint, cfg.s3_endpoint_url)
    return checkpoint, config, MelParams.from_dict(config["mel_params"])


def _generator_state(checkpoint: str, s3_endpoint_url: str | None) -> dict:
    from train.checkpoint import read_weights

    return read_weights(checkpoint, s3_endpoint_url)["gen_bass_to_drums"]


def _check_generator_loads(checkpoint: str, s3_endpoint_url: str | None) -> None:
    """Load the generator once on the driver: a broken checkpoint is a clear error, not a dead actor."""
    import pickle

    from pipelines.storage import StorageError
    from train.checkpoint import load_generator

    try:
        load_generator(checkpoint, device="cpu", s3_endpoint_url=s3_endpoint_url)
    except StorageError:
        raise  # a storage fault, not a broken checkpoint: exit 1, a re-run retries it
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise GenerateError(f"cannot load the generator from {checkpoint}: {type(err).__name__}: {err}") from err


def preflight(cfg: GenerateConfig) -> tuple[GenerateConfig, dict]:
    """Every check that needs no Ray: options, paths (made absolute), OUTPUT, checkpoint, inputs.

    Returns the config with resolved paths and the plan `run_generate` carries out.
    """
    from dataclasses import replace

    from pipelines.paths import check_output_outside_inputs
    from pipelines.storage import fsspec_filesystem, local_path_resolved, storage_errors

    cfg.validate()
    cfg = replace(cfg, checkpoint=local_path_resolved(cfg.checkpoint),
                  inputs=[local_path_resolved(u) for u in cfg.inputs],
                  output=local_path_resolved(cfg.output))
    check_output_outside_inputs(cfg.output, {"CHECKPOINT": cfg.checkpoint, "INPUT": cfg.inputs})
    fs, inner = fsspec_filesystem(cfg.output, cfg.s3_endpoint_url)
    with storage_errors("checking", cfg.output):
        if fs.isfile(inner):
            raise GenerateError(f"OUTPUT {cfg.output} is an existing file; give a folder")
    with storage_errors("reading the checkpoint", cfg.checkpoint):
        checkpoint, config, params = _checkpoint_info(cfg)
        plan = {"checkpoint": checkpoint, "config": config, "params": params,
                "generator": (config, _generator_state(checkpoint, cfg.s3_endpoint_url))}
    with storage_errors("listing", " ".join(cfg.inputs)):
        return cfg, _plan_sources(cfg, plan)


def _plan_sources(cfg: GenerateConfig, plan: dict) -> dict:
    from infer.sources import SourceError, is_parquet_source, list_audio

    params = plan["params"]
    parquet = [u for u in cfg.inputs if is_parquet_source(u, cfg.s3_endpoint_url)]
    if parquet:
        if len(cfg.inputs) != 1:
            raise GenerateError("give a Parquet window set as the only INPUT (not mixed with audio)")
        plan.update(kind="parquet", source=parquet[0],
                    n_clips=_parquet_test_rows(parquet[0], params, cfg.s3_endpoint_url))
        return plan
    try:
        clips = list_audio(cfg.inputs, stem="bass", s3_endpoint_url=cfg.s3_endpoint_url)
    except SourceError as err:
        raise GenerateError(str(err)) from err
    plan.update(kind="audio", clips=clips, n_clips=len(clips))
    return plan


def _parquet_test_rows(uri: str, params, s3_endpoint_url: str | None) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem
    from pipelines.windows import mel_params_from_schema

    fs, path = arrow_filesystem(uri, s3_endpoint_url)
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        data_params = mel_params_from_schema(dataset.schema)
    except (ValueError, pa.ArrowInvalid) as err:
        raise GenerateError(f"{uri}: {err}") from err
    if data_params != params:
        raise GenerateError(f"{uri} was made with other mel parameters than the checkpoint was trained on "
                            f"({data_params} vs {params})")
    n = dataset.count_rows(filter=pc.field("split") == "test")
    if n == 0:
        raise GenerateError(f"{uri}: no rows in the test split")
    return n
