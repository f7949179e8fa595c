"""`cycledrums evaluate CHECKPOINT TEST_SET OUTPUT`: generate and score in one Ray Data job.

What `cycledrums generate` then `cycledrums score` do, without writing every generated
clip to storage and reading it back.  One pipeline, one row per reference clip:

  reference (CPU tasks)   score's reference rows: true drums, bass, the other-clip
                          partner (infer.score_stages)
  bass -> model input     generate's decode (a Parquet set: its bass window), per
  (CPU tasks)             distinct mel parameters of the models
  per model:
    generator             generate's GeneratorActor: generator, stitch and Griffin-Lim
    drums                 generate's level match and WAV encoding (infer.generate_render.
                          inverted_rows / render_clip), then the WAV bytes are analysed
                          exactly as score analyses a drums.wav file
  features, Inception     score's features and baselines (score_stages.clip_rows), then
                          Inception-v3
On a CPU cluster all of it runs in one actor per core (EvaluateActor; only Parquet
windows are read in tasks): a clip's whole work in one process, one process start per
core.  On
GPUs each model gets a generator actor pool with its drums in CPU tasks, and the
features run in CPU tasks beside the Inception actors, as in score.  Then score's
driver-side work (infer.score_summary.finish): the same clips / errors
tables, summary.json, baselines, sanity ladder, plots and report.html.

Audio written: by default only for the clips the report shows (its worst / best /
random N per set): once the table is final, those clips go through generate's own
functions again (same seed, same drums) and land as generate lays them out,
OUTPUT/audio/<set>/<clip>/drums.wav, mix.wav, drums_mel.png; the clips table's
`generated` column names the drums.wav ('' where none was written).  On a CPU cluster
that runs in the driver, which already holds the models (a few dozen clips cost less
than starting an actor pool again); on GPUs in a generator pool.  When every clip of a
set is shown, or with --keep-audio, the files are written in the main job.

A generated clip is named after its reference clip: TEST_SET is one source (a folder
of `<clip>/drums.*` + `<clip>/bass.*` stems, or a `prepare` Parquet window set), so the
ids generate and score would give agree.  On GPUs each generator and Inception actor
reserves half of --gpus-per-actor, so the two share a GPU.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from cluster.errors import UserError
from cluster.options import options_of
from cluster.resources import ResourceRequest
from infer.evaluate_stages import EvaluateActor, ReportAudio, drums_batch, features_batch, model_input_batch
from infer.options import GenerationOptions, ScoringOptions

log = logging.getLogger(__name__)

AUDIO = "audio"  # OUTPUT/audio/<set label>/<clip>/drums.wav ...
GENERATOR_MEMORY = 1 << 29  # bytes a CPU evaluate actor reserves per model, on top of Inception's


class EvaluateError(UserError):
    """A problem with the job as a whole (bad options, labels, inputs)."""


@dataclass(kw_only=True)
class EvaluateConfig(GenerationOptions, ScoringOptions):
    """`evaluate` = generate + score: both option sets (infer/options.py) and what the job works on."""

    checkpoint: str                                   # [LABEL=]CHECKPOINT
    test_set: str
    output: str
    also: list[str] = field(default_factory=list)     # [LABEL=]CHECKPOINT each
    keep_audio: bool = False
    seed: int = 0
    s3_endpoint_url: str | None = None
    address: str | None = None
    resources: ResourceRequest = field(default_factory=ResourceRequest)


@dataclass
class Model:
    """One generated set: a checkpoint, generate's config for it and what its pre-flight loaded."""

    label: str
    index: int
    gen_cfg: object       # GenerateConfig (output: OUTPUT/audio/<label>)
    job: dict             # generate_preflight.preflight's plan: checkpoint, config, params, generator
    write_all: bool       # write every clip's audio in the main job (--keep-audio, or all are shown)


@dataclass
class EvaluateJob:
    cfg: EvaluateConfig
    score_cfg: object     # ScoreConfig
    reference: object     # ReferenceSet
    models: list[Model]
    sets: list            # [GeneratedSet], one per model
    inputs: dict          # reference clip id -> bass input (file, or "<parquet>#<clip>")
    weights: str
    grader: object
    annotations: object


# ---------------------------------------------------------------- pre-flight (no Ray)


def preflight(cfg: EvaluateConfig) -> EvaluateJob:
    """Every check generate and score make before Ray starts, on evaluate's inputs."""
    from pipelines.paths import check_output_outside_inputs
    from pipelines.storage import local_path_resolved

    from infer.score import ScoreConfig, check_inception_weights, check_output, prepare_annotations_and_grader

    cfg.check_generation()
    cfg.check_scoring()
    cfg = replace(cfg, test_set=local_path_resolved(cfg.test_set), output=local_path_resolved(cfg.output))
    specs = _model_specs(cfg)
    check_output_outside_inputs(cfg.output, {"TEST_SET": cfg.test_set,
                                             "CHECKPOINT": [checkpoint for _, checkpoint in specs],
                                             "--annotations": cfg.annotations, "--grader": cfg.grader,
                                             "--inception-weights": cfg.inception_weights,
                                             "--grading-key": getattr(cfg, "grading_key", None)})
    check_output(cfg.output, cfg.s3_endpoint_url)
    weights = check_inception_weights(cfg.inception_weights, cfg.s3_endpoint_url)
    reference = _reference(cfg)
    inputs = _bass_inputs(reference)
    score_cfg = ScoreConfig(
        **options_of(ScoringOptions, cfg) | {
            "inception_weights": weights,
            "baselines": len(reference.clip_ids) >= 2 if cfg.baselines is None else cfg.baselines},
        generated=[], reference=cfg.test_set, output=cfg.output, seed=cfg.seed,
        s3_endpoint_url=cfg.s3_endpoint_url, address=cfg.address, resources=cfg.resources)
    models = [_model(cfg, label, checkpoint, i, len(inputs)) for i, (label, checkpoint) in enumerate(specs)]
    sets = _generated_sets(models, inputs)
    grader, annotations = prepare_annotations_and_grader(score_cfg, sets, reference)
    return EvaluateJob(cfg, score_cfg, reference, models, sets, inputs, weights, grader, annotations)


def _model_specs(cfg: EvaluateConfig) -> list[tuple[str | None, str]]:
    from pipelines.storage import local_path_resolved

    from infer.score_inputs import parse_generated

    specs = []
    for spec in [cfg.checkpoint] + list(cfg.also):
        label, checkpoint = parse_generated(spec)
        specs.append((label, local_path_resolved(checkpoint)))
    return specs


def _reference(cfg: EvaluateConfig):
    from infer.score_inputs import load_reference
    from infer.sources import SourceError

    try:
        return load_reference(cfg.test_set, cfg.s3_endpoint_url)
    except SourceError as err:
        raise EvaluateError(str(err)) from err


def _bass_inputs(reference) -> dict[str, str]:
    """{clip id: the bass the models get}: the `bass.*` beside each `drums.*`, or the Parquet window."""
    if reference.kind == "parquet":
        return {cid: f"{reference.uri}#{cid}" for cid in reference.clip_ids}
    inputs = {r["clip_id"]: r["bass_uri"] for r in reference.audio_rows if r["bass_uri"]}
    if not inputs:
        raise EvaluateError(
            f"TEST_SET {reference.uri}: no clip has a bass beside its drums; evaluate needs "
            f"<clip>/drums.* and <clip>/bass.* stems (the musdb18 layout) or a `prepare` Parquet window set")
    return inputs


def _model(cfg: EvaluateConfig, label: str | None, checkpoint: str, index: int, n_clips: int) -> Model:
    """generate's pre-flight of one checkpoint on TEST_SET (loads it; checks the Parquet's mel parameters)."""
    from infer.generate import GenerateConfig
    from infer.generate_preflight import preflight as generate_preflight
    from infer.job_io import join_uri

    gen_cfg = GenerateConfig(
        **options_of(GenerationOptions, cfg), checkpoint=checkpoint, inputs=[cfg.test_set], output=cfg.output,
        seed=cfg.seed, s3_endpoint_url=cfg.s3_endpoint_url, address=cfg.address, resources=cfg.resources)
    gen_cfg, job = generate_preflight(gen_cfg)
    label = label or job["config"].get("model") or "generated"
    gen_cfg = replace(gen_cfg, output=join_uri(cfg.output, AUDIO, label))
    write_all = cfg.keep_audio or (cfg.report_clips > 0 and n_clips <= cfg.report_clips)
    return Model(label, index, gen_cfg, job, write_all)


def _generated_sets(models: list[Model], inputs: dict) -> list:
    from infer.baselines import BASELINES
    from infer.score_inputs import GeneratedSet
    from infer.score_stages import REFERENCE_LABEL
    from infer.sources import AudioClip

    seen: dict[str, str] = {}
    for m in models:
        if m.label in BASELINES or m.label == REFERENCE_LABEL:
            raise EvaluateError(f"set label {m.label!r} is reserved for a baseline; name the model LABEL=CHECKPOINT")
        if m.label in seen:
            raise EvaluateError(f"two models are labelled {m.label!r} ({seen[m.label]} and "
                                f"{m.job['checkpoint']}); name them LABEL=CHECKPOINT")
        seen[m.label] = m.job["checkpoint"]
    return [GeneratedSet(m.label, m.job["checkpoint"], [AudioClip(cid, uri) for cid, uri in inputs.items()],
                         matches={cid: cid for cid in inputs}) for m in models]


# ---------------------------------------------------------------- the job


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Run the whole job; returns score's summary (also OUTPUT/summary.json) with an `evaluate` part."""
    from cluster.ray_runtime import init_ray
    from cluster.node_watch import watching_nodes
    from cluster.placement import broken_gpu_node_as, ending_placement_books
    from pipelines.storage import storage_faults_in_ray

    from infer.results import EVALUATE_RESULTS, ResultSet
    from infer.score import ScoreError
    from infer.score_rows import collect
    from infer.score_summary import finish

    job = preflight(cfg)
    # The previous run's set goes aside; OUTPUT is marked incomplete until the commit (infer/results.py):
    # before the job when its workers write audio (--keep-audio), else before the results are written.
    results = ResultSet(job.cfg.output, EVALUATE_RESULTS, "evaluate", cfg.s3_endpoint_url)
    if any(m.write_all for m in job.models):
        results.begin()
    init_ray(cfg.address)
    start = time.perf_counter()
    pools = _plan_pools(cfg.resources, len(job.models))
    log.info("evaluating %d model(s) (%s) on %d clip(s) of %s (%s; baselines %s)", len(job.models),
             ", ".join(m.label for m in job.models), len(job.inputs), job.reference.uri, job.reference.kind,
             "on" if job.score_cfg.baselines else "off")
    with ending_placement_books(*(book for _, book in pools.values())):
        ds = build_dataset(job, pools)
        with storage_faults_in_ray(), broken_gpu_node_as(EvaluateError), watching_nodes("evaluate") as watch:
            rows = collect(ds, len(job.reference.clip_ids), job.score_cfg.seed)
        resources = _pool_summaries(pools)
    info = {"test_set": job.reference.uri, "models": {}, "generator_resources": resources["generator"],
            "nodes_lost": watch.summary()}
    writer = ReportAudio(job, pools, info)
    if not any(m.write_all for m in job.models):
        results.begin()
    try:
        summary = finish(rows, job.sets, job.reference, job.score_cfg, job.grader, job.annotations,
                         time.perf_counter() - start, resources["Inception"],
                         before_write=writer, extra={"evaluate": info})
    except ScoreError as err:
        raise EvaluateError(str(err)) from err
    results.commit()
    return summary


def fused_actor_memory(n_models: int) -> int:
    """Bytes a CPU EvaluateActor reserves: a model actor's share (Inception) plus
    GENERATOR_MEMORY per model.  Measured: two models on 40 s takes peaked at 1.6 GiB
    (USS) in one actor; Ray Data warns when a reservation leaves under 25% headroom."""
    from cluster.resources import ACTOR_MEMORY

    return ACTOR_MEMORY + GENERATOR_MEMORY * n_models


def _plan_pools(request: ResourceRequest, n_models: int) -> dict:
    """{"generator": (plan, book), "Inception": (plan, book)}.

    CPU: one pool for both (the same plan and book under each key): an EvaluateActor per
    core does a reference clip's whole evaluation, generators and Inception, so the job
    starts one process per core, not two, and no stage waits for another's actors.  Each
    such actor reserves memory for Inception plus every model's generator and audio
    (`fused_actor_memory`).  GPU:
    two pools; each actor reserves half of --gpus-per-actor, and by default each pool
    grows to half of what one pool could, so a generator and an Inception actor share each GPU.
    """
    from cluster.resources import ResourceError, choose_device, plan_model_stage
    from cluster.cluster_view import cluster_view
    from cluster.placement import ending_placement_books
    from infer.generate import IO_CPUS

    g = request.gpus_per_actor
    shared = replace(request, gpus_per_actor=g / 2 if g <= 1 or g % 2 == 0 else g)
    cpu = choose_device(request.device, cluster_view())[0] == "cpu"
    pools = {}
    for what in ("generator + Inception",) if cpu else ("generator", "Inception"):
        memory = {"memory": fused_actor_memory(n_models)} if cpu else {}
        try:
            plan, book = plan_model_stage(shared, what=what, io_cpus=IO_CPUS, **memory)
        except ResourceError as err:
            with ending_placement_books(*(b for _, b in pools.values())):  # the pools already planned
                raise EvaluateError(str(err)) from err
        if cpu:
            return {"generator": (plan, book), "Inception": (plan, book)}
        if request.actors is None:
            plan = replace(plan, max_size=max(plan.min_size, plan.max_size // 2))
        pools[what] = (plan, book)
    return pools


def _pool_summaries(pools: dict) -> dict:
    """Each pool's placement summary; each book is read once (on CPU both pools are the one
    fused pool, with one book)."""
    from cluster.placement import placement_summary, read_placements

    entries = {}  # id(book) -> its placements
    for plan, book in pools.values():
        if id(book) not in entries:
            entries[id(book)] = read_placements(book)
    return {what: placement_summary(plan, entries[id(book)]) for what, (plan, book) in pools.items()}


def build_dataset(job: EvaluateJob, pools: dict):
    """The lazy pipeline: reference rows -> each model's drums -> features -> Inception.

    CPU: everything runs in EvaluateActor (audio references are decoded there too; Parquet
    windows are read in the plan's light I/O tasks).  GPU: each model's generator actor pool
    with its decode and render tasks, then the features in 1-CPU tasks beside the Inception
    actors, as in score."""
    from infer import generate_stages as stages
    from infer.job_io import CLIPS_PER_BLOCK
    from infer.score import generated_lookup, inception_kwargs, inception_stage, reference_dataset

    params = job.reference.params
    gen_plan, gen_book = pools["generator"]
    steps = _model_steps(job)
    features = {"lookup": generated_lookup(job.sets), "index": {m.label: m.index for m in job.models},
                "params_dict": params.to_dict(), "baselines": bool(job.score_cfg.baselines), "seed": job.cfg.seed}
    plan, book = pools["Inception"]
    if plan.device == "cpu":
        ds, before = reference_dataset(job.reference, job.score_cfg, gen_plan.io, decode_in_actor=True)
        models = [{"generator": stages.generator_kwargs(m.gen_cfg, m.job, "cpu", book, plan.torch_threads),
                   "input": model_input, "drums": drums} for m, model_input, drums in steps]
        return ds.map_batches(EvaluateActor, fn_constructor_kwargs={
            "models": models, "features": features, "before": before,
            **inception_kwargs(params, job.score_cfg, job.weights, plan, book)},
            batch_format="numpy", batch_size=CLIPS_PER_BLOCK, compute=plan.compute(), **plan.remote_args())
    ds, _ = reference_dataset(job.reference, job.score_cfg, gen_plan.io)
    ds = ds.map_batches(model_input_batch, batch_format="numpy", batch_size=CLIPS_PER_BLOCK,
                        **gen_plan.io.map_args(), fn_kwargs=steps[0][1])
    for i, (m, model_input, drums) in enumerate(steps):
        if i and model_input:
            ds = ds.map_batches(model_input_batch, batch_format="numpy", batch_size=CLIPS_PER_BLOCK,
                                **gen_plan.io.map_args(), fn_kwargs=model_input)
        ds = stages.generator_stage(ds, m.gen_cfg, m.job, gen_plan, gen_book)
        ds = ds.map_batches(drums_batch, batch_format="numpy", batch_size=CLIPS_PER_BLOCK, **gen_plan.io.map_args(),
                            fn_kwargs=drums)
    ds = ds.map_batches(features_batch, batch_format="numpy", batch_size=8, num_cpus=1, fn_kwargs=features)
    return inception_stage(ds, params, job.score_cfg, job.weights, plan, book)


def _model_steps(job: EvaluateJob) -> list[tuple[Model, dict | None, dict]]:
    """Per model: (model, model_input_batch's arguments when its mel parameters differ from
    the previous model's, else None, drums_batch's arguments)."""
    steps, decoded = [], None
    for m in job.models:
        model_params = m.job["params"]
        model_input = None
        if model_params != decoded:  # the models' input: decoded once per mel parameter set
            model_input = {"inputs": job.inputs, "kind": job.reference.kind, "params_dict": model_params.to_dict(),
                           "s3_endpoint_url": job.cfg.s3_endpoint_url}
            decoded = model_params
        drums = {"index": m.index, "params_dict": model_params.to_dict(),
                 "ref_params_dict": job.reference.params.to_dict(), "sample_rate": m.gen_cfg.sample_rate,
                 "drums_gain_db": m.gen_cfg.drums_gain_db, "drums_level": m.gen_cfg.drums_level,
                 "output": m.gen_cfg.output if m.write_all else None,
                 "s3_endpoint_url": job.cfg.s3_endpoint_url}
        steps.append((m, model_input, drums))
    return steps
