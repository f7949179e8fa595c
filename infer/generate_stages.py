"""generate's Ray Data stages, and the same stages run in this process for a few clips.

On GPUs: decode in light CPU tasks, the generator actor pool (generate, stitch, invert),
render in light CPU tasks beside it.  On a CPU cluster one ClipActor per core does a
block of clips' whole work (Parquet windows are still read in tasks).  run_generate
(infer/generate.py) and evaluate build their jobs from these.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from infer.generate_actor import GeneratorActor
from infer.generate_decode import decode_batch, parquet_batch, parquet_clips
from infer.generate_preflight import GenerateError
from infer.generate_render import render_batch

if TYPE_CHECKING:
    from infer.generate import GenerateConfig


def source_dataset(cfg: GenerateConfig, plan: dict, io):
    """Ray dataset of decoded clips (the plan's audio clips or Parquet test windows), in the
    light tasks `io` describes (cluster.resources.IOTasks)."""
    import ray.data

    params = plan["params"]
    if plan["kind"] == "parquet":
        return parquet_dataset(cfg, params, plan["source"], io)
    clips = plan["clips"]
    ds = ray.data.from_items([{"clip_id": c.clip_id, "uri": c.uri} for c in clips],
                             override_num_blocks=max(1, len(clips)))
    return ds.map_batches(decode_batch, batch_size=1, batch_format="numpy", **io.map_args(),
                          fn_kwargs={"params_dict": params.to_dict(), "s3_endpoint_url": cfg.s3_endpoint_url})


def parquet_dataset(cfg: GenerateConfig, params, uri: str, io):
    import ray.data
    from ray.data.expressions import col

    from pipelines.storage import arrow_filesystem

    fs, path = arrow_filesystem(uri, cfg.s3_endpoint_url)
    # Every stage says what it reserves: a default 1-CPU read could wait forever behind the actors.
    ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=io.num_cpus).select_columns(
        ["track_id", "split", "window", "bass"])
    ds = ds.filter(expr=col("split") == "test", num_cpus=io.num_cpus)
    return ds.map_batches(parquet_batch, batch_size=64, batch_format="pyarrow", **io.map_args(),
                          fn_kwargs={"params_dict": params.to_dict(), "source": uri})


def generator_stage(ds, cfg: GenerateConfig, job: dict, plan, book):
    """`ds` (decoded clips) through the generator actor pool of `plan` (preflight's `job`).

    A GPU actor takes `batch_size` clips per call (their windows fill the GPU's batches);
    a CPU actor a few, so every core's actor gets a share of a small job."""
    from infer.job_io import CLIPS_PER_BLOCK

    return ds.map_batches(
        GeneratorActor, batch_size=cfg.generator_batch if plan.device == "cuda" else CLIPS_PER_BLOCK,
        batch_format="numpy", compute=plan.compute(),
        fn_constructor_kwargs=generator_kwargs(cfg, job, plan.device, book, plan.torch_threads),
        **plan.remote_args())


class ClipActor:
    """On a CPU cluster: a block of clips' whole generation, one actor per core: the decode
    (audio inputs; `before`), the generator and Griffin-Lim (GeneratorActor), the mix and
    the files (render_batch).  One process per core does a clip's work: no task process
    imports torch beside the actors while they start, or shares their cores afterwards."""

    def __init__(self, before, render: dict, **generator):
        self.before, self.render = before, render
        self.generator = GeneratorActor(**generator)

    def __call__(self, batch: dict) -> dict:
        from infer.score_stages import run_steps

        return render_batch(self.generator(run_steps(batch, self.before)), **self.render)


def clip_stage(cfg: GenerateConfig, job: dict, plan, book):
    """A CPU cluster's generation: the inputs through ClipActor (Parquet windows are read in
    the light tasks of plan.io, audio files decoded in the actors)."""
    import ray.data

    from infer.job_io import CLIPS_PER_BLOCK

    params = job["params"]
    if job["kind"] == "parquet":
        ds, before = parquet_dataset(cfg, params, job["source"], plan.io), []
    else:
        ds = ray.data.from_items([{"clip_id": c.clip_id, "uri": c.uri} for c in job["clips"]])
        before = [(decode_batch, {"params_dict": params.to_dict(), "s3_endpoint_url": cfg.s3_endpoint_url})]
    return ds.map_batches(
        ClipActor, batch_size=CLIPS_PER_BLOCK, batch_format="numpy", compute=plan.compute(),
        fn_constructor_kwargs={"before": before, "render": render_kwargs(cfg, params),
                               **generator_kwargs(cfg, job, plan.device, book, plan.torch_threads)},
        **plan.remote_args())


def generator_kwargs(cfg: GenerateConfig, job: dict, device: str, book=None, torch_threads: int = 1) -> dict:
    """GeneratorActor's constructor arguments for preflight's `job` (the driver's copy of the generator)."""
    return {"checkpoint": job["checkpoint"], "device": device, "batch_size": cfg.generator_batch,
            "variation": cfg.variation, "seed": cfg.seed, "s3_endpoint_url": cfg.s3_endpoint_url,
            "generator": job["generator"], "placements": book, "torch_threads": torch_threads,
            "n_iter": cfg.griffin_lim_iters}


def render_stage(ds, cfg: GenerateConfig, params, io):
    """Generated rows -> the clips' files under cfg.output (the light tasks `io` describes);
    rows of manifest / error JSON."""
    return ds.map_batches(render_batch, batch_size=cfg.generator_batch, batch_format="numpy", **io.map_args(),
                          fn_kwargs=render_kwargs(cfg, params))


def render_kwargs(cfg: GenerateConfig, params) -> dict:
    return {"params_dict": params.to_dict(), "output": cfg.output, "sample_rate": cfg.sample_rate,
            "drums_gain_db": cfg.drums_gain_db, "drums_level": cfg.drums_level,
            "s3_endpoint_url": cfg.s3_endpoint_url}


def split_results(batch: dict, manifest: list[dict], errors: list[dict]) -> tuple[int, int]:
    """render_batch's result rows -> appended to the manifest / error rows; (rows, errors)."""
    rows = [json.loads(s) for s in batch["result"]]
    bad = [r for r in rows if r["error"]]
    errors += [{"clip_id": r["clip_id"], "input": r["input"], "stage": r["stage"],
                "reason": r["error"], "transient": bool(r.get("transient"))} for r in bad]
    manifest += [{k: v for k, v in r.items() if k not in ("error", "stage", "transient")}
                 for r in rows if not r["error"]]
    return len(rows), len(bad)


def collect_results(ds, n_clips: int):
    """The job's result rows, as its batches come back, into a ManifestSink (infer.generate_manifest)."""
    from cluster.node_watch import watching_nodes
    from cluster.placement import broken_gpu_node_as
    from pipelines.storage import storage_faults_in_ray

    from cluster.console import Progress
    from infer.generate_manifest import ManifestSink

    progress = Progress("generate", n_clips)
    sink = ManifestSink()
    try:
        with storage_faults_in_ray(), broken_gpu_node_as(GenerateError), watching_nodes("generate"):
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):  # each block as it comes
                manifest, errors = [], []
                progress.update(*split_results(batch, manifest, errors))
                sink.add(manifest, errors)
    except BaseException:
        sink.close()
        raise
    return sink


def generate_in_process(cfg: GenerateConfig, job: dict, clip_ids: list[str], inputs: dict,
                        chunk: int = 4) -> tuple[list[dict], list[dict]]:
    """(manifest rows, error rows) of a few clips generated here, without Ray: the same
    decode, generator, inversion and render functions as the job, on the generator the
    pre-flight loaded, with this process's cores as torch threads.  For a handful of clips
    (evaluate's report audio on a CPU cluster) this costs less than starting an actor pool.
    `inputs`: clip id -> bass file, or "<Parquet window set>#<clip id>"."""
    import os

    params = job["params"]
    actor = GeneratorActor(**generator_kwargs(cfg, job, "cpu", None, os.cpu_count() or 1))
    manifest, errors = [], []
    for i in range(0, len(clip_ids), chunk):
        ids = clip_ids[i:i + chunk]
        if job["kind"] == "parquet":
            batch = parquet_clips(job["source"], ids, params, cfg.s3_endpoint_url)
        else:
            batch = decode_batch({"clip_id": np.array(ids, dtype=object),
                                  "uri": np.array([inputs[c] for c in ids], dtype=object)},
                                 params.to_dict(), cfg.s3_endpoint_url)
        if len(batch["clip_id"]):
            split_results(render_batch(actor(batch), params.to_dict(), cfg.output, cfg.sample_rate,
                                       cfg.drums_gain_db, cfg.drums_level, cfg.s3_endpoint_url),
                          manifest, errors)
    return manifest, errors
