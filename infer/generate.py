"""`cycledrums generate CHECKPOINT INPUT... OUTPUT`: drums for bass lines, as a Ray Data job.

Stages.  On GPUs the model and Griffin-Lim run in one actor per GPU, decoding and
writing in light CPU tasks beside them, so neither waits on the other.  On a CPU cluster
one actor per core (ClipActor) runs all three for a block of clips: a clip's whole work
in one process, and no task process starting beside the actors (Parquet windows are
still read in tasks).
  1. decode (CPU tasks; infer/generate_decode.py): read the bass file, mono at the model's
     mel rate, mel image.  For a Parquet window set: its `test` rows' `bass` windows, one
     clip per window.
  2. generate + invert (infer/generate_actor.py; an actor pool sized by the shared
     resource policy, cluster/resources.py: GPU actors with --device cuda / auto on a GPU cluster, else
     one CPU actor per core with one torch thread): the generator is loaded once per
     actor with `train.checkpoint.load_generator`; each image is cut into 256-frame
     windows with 50 frames of overlap, the tail padded with silence so every frame is
     covered, the windows go through it `batch_size` at a time and are stitched with a
     cross-faded overlap-add of their mel power (`pipelines.windowing.apply_windowed_many`,
     whose docstring says why power, not dB); then the image is inverted with batched
     Griffin-Lim (`pipelines.mel.image_to_audio`).  Inverting in the actor keeps the
     audio path on the GPU there, and on CPU it keeps a clip's compute in one
     process: nothing heavy waits in the object store for a free task.
  3. write (CPU tasks; infer/generate_render.py): resampled to the output rate,
     level-matched to the bass, mixed with the ORIGINAL bass audio (re-read from the
     input; for Parquet input the bass is re-synthesised from its mel window), written as
     drums.wav, mix.wav and drums_mel.png.
Then the driver (here) writes manifest.parquet/.csv, errors.parquet/.csv and summary.json.
The stages are put together in infer/generate_stages.py; the checks before Ray starts are
infer/generate_preflight.py's.

Controlled randomness (`variation`, `seed`): seeded noise on the generator's input, per
window (infer/generate_actor.py says how): the same seed gives the same drums, another seed
other drums, and variation 0 gives the deterministic output whatever the seed.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

from cluster.resources import ResourceRequest
from infer.options import GenerationOptions
from pipelines.storage import write_bytes

from infer.generate_preflight import GenerateError, preflight

log = logging.getLogger(__name__)

# CPUs the decode and write tasks share on a CPU cluster; the generator actors, which also
# invert, take the rest (cluster.resources.plan_actors).
IO_CPUS = 0.5


@dataclass(kw_only=True)
class GenerateConfig(GenerationOptions):
    """`generate`: the generation options (infer/options.py) and what the job works on."""

    checkpoint: str
    inputs: list[str]
    output: str
    seed: int = 0
    s3_endpoint_url: str | None = None
    address: str | None = None
    resources: ResourceRequest = field(default_factory=ResourceRequest)

    def validate(self) -> None:
        self.check_generation()


def run_generate(cfg: GenerateConfig) -> dict:
    """Run the whole generation job; returns the summary (also written to OUTPUT/summary.json)."""
    import pyarrow as pa

    from cluster.ray_runtime import init_ray
    from cluster.resources import ResourceError, plan_model_stage
    from cluster.placement import ending_placement_books, placement_summary, read_placements

    from infer.generate_stages import clip_stage, collect_results, generator_stage, render_stage, source_dataset
    from infer.results import generate_results
    from infer.job_io import join_uri, write_table

    cfg, job = preflight(cfg)
    checkpoint, config, params = job["checkpoint"], job["config"], job["params"]
    n_clips, kind = job["n_clips"], job["kind"]
    # The previous run's set goes aside; OUTPUT is marked incomplete until the commit (infer/results.py).
    results = generate_results(cfg.output, [c.clip_id for c in job.get("clips", [])], cfg.s3_endpoint_url)
    results.begin()
    init_ray(cfg.address)
    start = time.perf_counter()
    try:  # the actors generate and invert (Griffin-Lim): the heavy work; the tasks only decode and write
        plan, book = plan_model_stage(cfg.resources, what="generator", io_cpus=IO_CPUS)
    except ResourceError as err:
        raise GenerateError(str(err)) from err
    log.info("generating drums for %d %s clip(s) with %s (%s); generator: %s", n_clips, kind, checkpoint,
             config.get("model"), plan.describe())
    with ending_placement_books(book):
        if plan.device == "cpu":
            ds = clip_stage(cfg, job, plan, book)
        else:
            ds = render_stage(generator_stage(source_dataset(cfg, job, plan.io), cfg, job, plan, book),
                              cfg, params, plan.io)
        sink = collect_results(ds, n_clips)
        placements = read_placements(book)
    seconds = time.perf_counter() - start
    try:
        manifest = sink.sorted_table()
        errors = sorted(sink.errors, key=lambda r: r["clip_id"])
        outputs = write_table(manifest, cfg.output, "manifest", cfg.s3_endpoint_url)
        outputs += write_table(pa.Table.from_pylist(errors, schema=_errors_schema()), cfg.output, "errors",
                               cfg.s3_endpoint_url)
    finally:
        sink.close()
    stage_totals = {k[len("seconds_"):]: round(v, 3) for k, v in sink.stage_seconds.items()}
    audio_seconds = sink.audio_seconds
    summary = {
        "checkpoint": checkpoint, "model": config.get("model"), "input_kind": kind, "inputs": cfg.inputs,
        "clips": sink.clips, "errors": len(errors),
        "errors_transient": sum(e["transient"] for e in errors),  # storage faults: a re-run retries
        "audio_seconds": round(audio_seconds, 3),
        "windows": sink.windows,
        "seconds": {"job": round(seconds, 3), **stage_totals},
        "clips_per_second": round(sink.clips / seconds, 4) if seconds > 0 else None,
        "realtime_factor": round(audio_seconds / seconds, 3) if seconds > 0 else None,
        "device": plan.device, "generator_actors": plan.size,
        "inversion": f"generator actor ({plan.device})",
        "resources": placement_summary(plan, placements),
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("inputs", "output", "checkpoint")},
        "mel_params": params.to_dict(), "outputs": outputs,
    }
    summary_path = join_uri(cfg.output, "summary.json")
    write_bytes(summary_path, json.dumps(summary, indent=2).encode(), cfg.s3_endpoint_url)
    results.commit()
    log.info("generate: %d clip(s) done, %d error(s), %.1f s of audio in %.1f s", sink.clips, len(errors),
             audio_seconds, seconds)
    return summary


def _errors_schema():
    import pyarrow as pa

    return pa.schema([("clip_id", pa.string()), ("input", pa.string()), ("stage", pa.string()),
                      ("reason", pa.string()), ("transient", pa.bool_())])
