"""`cycledrums score GENERATED REFERENCE OUTPUT`: objective features, a grader, histograms.

GENERATED: the drums to score.  One of
  - a `cycledrums generate` OUTPUT folder: its manifest lists each clip's drums.wav;
  - a folder (or single file) of drum audio: clip ids as in `infer.sources` (a folder of
    `<clip>/drums.wav` files, or of `<clip>.wav` files).
  Several sets can be scored together (e.g. CycleGAN and Pix2Pix): each is
  `[LABEL=]PATH`; the label defaults to the model named in the generate summary, else
  the folder's name.

REFERENCE: the true drums, matched to generated clips by clip id.  One of
  - a `prepare` Parquet window set: its `test` split rows; a clip is one window, id
    "<track_id>/w<window:04d>" (what `generate` names the clips it makes from the same
    Parquet); the true drums are the `drums` image, the bass the `bass` image;
  - a folder of drum audio: `<clip>/drums.*` (a `bass.*` beside it is used for the
    rhythm features) or `<clip>.*`.
  Every reference clip, generated or not, is also a sample of "real drums" for the
  Gaussians of the density features.

Per generated clip (the generated audio is turned into a mel image with the
reference's mel parameters; the two images are compared over their common length):
  stoi_000..stoi_255   STOI-like correlation per mel bin (infer.features)
  stoi_mean            its mean over the true drums' active bins
  level_diff_db        generated minus true mean mel level, dB
  spectrum_match       correlation of the long-term spectra (does it sound like the drums)
  rhythm_*             banded onset agreement with the true drums, rhythm pattern, the
                       song's tempo, each times how unlike a copy of the bass the drums
                       are (infer.features)
  density_<layer>      log-likelihood per dimension of the clip's Inception-v3 activations
                       (mixed_5d, mixed_6e, pool3) under the Gaussian fitted to the real clips
                       of the other half (2-fold cross-fitting by reference clip id: a clip is
                       never judged by a Gaussian that saw its own true drums)
Per set: the Fréchet (Inception) distance to the real clips at each layer, with the
clip counts and covariance estimate it rests on (infer.density).

Baselines (--baselines, on by default when the reference has 2 or more clips;
infer.baselines): true drums, another clip's true drums, the bass, noise shaped like
the drums, silence; scored as sets of their own, flagged `baseline`.  The sanity
ladder (infer.ladder) checks, per metric, that it ranks them true > other clip >
noise / silence / bass; the grader's default features are the metrics that pass.

Grader: with --annotations, a logistic-regression grader (infer.grader) is trained
and cross-validated, saved as plain data (OUTPUT/grader.json + grader.npz, never a
pickle) and applied to every clip; with --grader PATH a saved one is applied (and,
with annotations too, evaluated on them, not retrained).  Without either, only the
objective features are reported.

The grading loop (infer.grading_sheet): --grading-sheet N writes OUTPUT/grade.html, a
blind listening test of N clips sampled across the sets and the baselines under
opaque ids; each rater's downloaded CSV is an --annotations file (repeat the flag),
its ids mapped back through OUTPUT/grading_key.csv (or --grading-key).  With
annotations the summary's `human_grades` part has the raters' Pearson agreement
matrices per dimension and overall, each set's grade distribution and whether the
anchors sit where they should (true drums on top, noise and silence at the bottom).

OUTPUT: clips.parquet + clips.csv (one row per generated clip: features, annotated
grade and bucket, predicted bucket and its probabilities, seconds per stage),
errors.parquet + errors.csv (clips that could not be scored, with the reason),
summary.json, report.html + media/ (infer.html_report: listen, look, sort),
buckets.png (predicted buckets per set, like the paper's figure 4),
grades.png (annotated grades, like figure 3), features.png.

Modules: infer.score_inputs (options, inputs, matching, pre-flight checks, all
before Ray starts), infer.score_stages (the Ray Data stages: references, features
and baselines on CPU tasks, Inception on an actor pool: one actor per GPU when the
cluster has GPUs, else CPU actors), infer.score_rows (the rows as they come back: what
the driver keeps of them, bounded Gaussian statistics, the spilled activations for the
densities), infer.score_summary (densities, distances, ladder, grader, tables and plots
on the driver).
"""
from __future__ import annotations

import logging
import time

from infer.score_inputs import (  # noqa: F401  (the public names of the job)
    GeneratedSet, ReferenceSet, ScoreConfig, ScoreError, attach_matches, check_inception_weights,
    check_output, load_generated_sets, load_reference, parse_generated)
from infer.score_stages import DENSITY_FEATURES, REFERENCE_LABEL, SCALAR_FEATURES, mel_feature_names  # noqa: F401
from infer.job_io import CLIPS_PER_BLOCK
from infer.score_rows import collect
from infer.score_summary import finish, grader_feature_names  # noqa: F401

log = logging.getLogger(__name__)
# CPUs the reference-decoding tasks share on a CPU cluster; the actors that compute the
# features and Inception take the rest (cluster.resources.plan_actors).
IO_CPUS = 0.5


def run_score(cfg: ScoreConfig) -> dict:
    """Run the whole scoring job; returns the summary (also written to OUTPUT/summary.json)."""
    from cluster.node_watch import watching_nodes
    from cluster.ray_runtime import init_ray
    from cluster.placement import broken_gpu_node_as, ending_placement_books, placement_summary, read_placements

    from infer.results import SCORE_RESULTS, ResultSet

    sets, reference, weights, grader, annotations = prepare_inputs(cfg)
    init_ray(cfg.address)
    start = time.perf_counter()
    ds, plan, book = build_dataset(reference, sets, cfg, weights)
    n_generated = sum(len(s.matches) for s in sets)
    log.info("scoring %d generated clips in %d set(s) against %d reference clips (%s; baselines %s); "
             "Inception on %s x%d", n_generated, len(sets), len(reference.clip_ids), reference.kind,
             "on" if cfg.baselines else "off", plan.device, plan.size)
    with ending_placement_books(book):
        with broken_gpu_node_as(ScoreError), watching_nodes("score"):
            rows = collect(ds, len(reference.clip_ids), cfg.seed)
        resources = placement_summary(plan, read_placements(book))
    # The previous run's set goes aside; OUTPUT is marked incomplete until the commit (infer/results.py).
    results = ResultSet(cfg.output, SCORE_RESULTS, "score", cfg.s3_endpoint_url)
    results.begin()
    summary = finish(rows, sets, reference, cfg, grader, annotations, time.perf_counter() - start,
                     resources)
    results.commit()
    return summary


def prepare_inputs(cfg: ScoreConfig):
    """Every check that needs no Ray: options, OUTPUT, weights, inputs, clip matching, grader, annotations."""
    from infer.sources import SourceError
    from pipelines.paths import check_output_outside_inputs

    from infer.results import check_complete

    cfg.check_scoring()
    check_output_outside_inputs(cfg.output, {"GENERATED": [parse_generated(g)[1] for g in cfg.generated],
                                             "REFERENCE": cfg.reference, "--annotations": cfg.annotations,
                                             "--grader": cfg.grader, "--inception-weights": cfg.inception_weights,
                                             "--grading-key": getattr(cfg, "grading_key", None)})
    for spec in cfg.generated:  # a set whose generate run was killed is not scored as if complete
        check_complete(parse_generated(spec)[1], "GENERATED", cfg.s3_endpoint_url)
    check_output(cfg.output, cfg.s3_endpoint_url)
    weights = check_inception_weights(cfg.inception_weights, cfg.s3_endpoint_url)
    try:
        sets = load_generated_sets(cfg.generated, cfg.s3_endpoint_url)
        reference = load_reference(cfg.reference, cfg.s3_endpoint_url)
    except SourceError as err:
        raise ScoreError(str(err)) from err
    _check_labels(sets)
    attach_matches(sets, reference)
    if cfg.baselines is None:
        cfg.baselines = len(reference.clip_ids) >= 2
    grader, annotations = prepare_annotations_and_grader(cfg, sets, reference)
    return sets, reference, weights, grader, annotations


def prepare_annotations_and_grader(cfg: ScoreConfig, sets: list[GeneratedSet], reference: ReferenceSet | None = None):
    """(the saved grader or None, the annotations or None), checked against the sets' clips (and,
    given the reference, the grader's features against the ones this job computes)."""
    annotations = _read_annotations_if_any(cfg)
    if annotations is not None:
        _check_annotated_ids(annotations, sets, annotation_paths(cfg)[0], reference, bool(cfg.baselines))
    grader = _load_grader_if_any(cfg)
    if grader is not None and reference is not None:
        from infer.grader import GraderError

        try:
            grader.check_features(mel_feature_names(reference.params.n_mels) + list(DENSITY_FEATURES),
                                  f"computed here ({reference.params.n_mels} mel bins)")
        except GraderError as err:
            raise ScoreError(f"--grader {cfg.grader}: {err}") from err
    return grader, annotations


def annotation_paths(cfg: ScoreConfig) -> list[str]:
    if not cfg.annotations:
        return []
    return [cfg.annotations] if isinstance(cfg.annotations, str) else list(cfg.annotations)


def _check_annotated_ids(annotations, sets: list[GeneratedSet], path: str, reference: ReferenceSet | None = None,
                         baselines: bool = False) -> None:
    """Annotations must name clips this job scores: else the whole job would run for nothing."""
    scored = {(s.label, c.clip_id) for s in sets for c in s.clips if c.clip_id in s.matches}
    if baselines and reference is not None:  # grade.html also samples the baselines of every reference clip
        from infer.baselines import BASELINES

        scored |= {(b, cid) for b in BASELINES for cid in reference.clip_ids}
    by_set = "set" in annotations.columns
    keys = zip(annotations["set"], annotations["clip_id"]) if by_set else annotations["clip_id"]
    known = {(label, cid) for label, cid in scored} if by_set else {cid for _, cid in scored}
    if not any(k in known for k in keys):
        ids = sorted({cid for _, cid in scored})[:3]
        raise ScoreError(
            f"--annotations {path}: none of its clip ids{' (with their set)' if by_set else ''} is a "
            f"clip scored here (e.g. {', '.join(annotations['clip_id'].astype(str).head(3))}); "
            f"scored clips look like {', '.join(ids) or '(none)'}")


def _check_labels(sets: list[GeneratedSet]) -> None:
    from infer.baselines import BASELINES

    for s in sets:
        if s.label in BASELINES or s.label == REFERENCE_LABEL:
            raise ScoreError(f"set label {s.label!r} is reserved for a baseline; name the set LABEL=PATH")


def _load_grader_if_any(cfg: ScoreConfig):
    if not cfg.grader:
        return None
    from infer.grader import load_grader

    return load_grader(cfg.grader, cfg.s3_endpoint_url)  # GraderError: a UserError, one line


def _read_annotations_if_any(cfg: ScoreConfig):
    """Every --annotations CSV, concatenated; grade.html's files mapped to (set, clip id) by its key."""
    paths = annotation_paths(cfg)
    if not paths:
        return None
    import pandas as pd

    from infer.grader import AnnotationError, read_annotations
    from infer.grading_sheet import KEY, is_sheet_annotations, map_sheet_ids
    from infer.job_io import join_uri

    frames = [read_annotations(p, cfg.s3_endpoint_url) for p in paths]
    from_sheet = [is_sheet_annotations(f) for f in frames]
    if any(from_sheet) and not all(from_sheet):
        raise AnnotationError("--annotations: mix of grade.html files (with a 'sheet' column) and other CSVs; "
                              "give one kind at a time")
    annotations = pd.concat(frames, ignore_index=True)
    if all(from_sheet):
        key = cfg.grading_key or join_uri(cfg.output, KEY)
        annotations = map_sheet_ids(annotations, key, cfg.s3_endpoint_url)
    dup = annotations.duplicated(subset=[c for c in ("set", "clip_id", "rater") if c in annotations.columns])
    if dup.any():
        row = annotations[dup].iloc[0]
        raise AnnotationError(f"--annotations: rater {row['rater']!r} graded clip {row['clip_id']!r} more than "
                              f"once ({int(dup.sum())} repeated row(s)); two raters with one name?")
    return annotations


def generated_lookup(sets: list[GeneratedSet]) -> dict[str, list]:
    """{reference clip id: [(set label, generated uri, generated clip id)]}."""
    lookup: dict[str, list] = {}
    for s in sets:
        for clip in s.clips:
            ref_id = s.matches.get(clip.clip_id)
            if ref_id is not None:
                lookup.setdefault(ref_id, []).append((s.label, clip.uri, clip.clip_id))
    return lookup


def reference_dataset(reference: ReferenceSet, cfg: ScoreConfig, io, decode_in_actor: bool = False):
    """(Ray dataset of reference rows, the steps still to run on them).

    Decoded rows are (clip_id, ref_image, bass_image, other_image, ref_error, ref_seconds),
    made in the light tasks `io` describes (cluster.resources.IOTasks).  With
    `decode_in_actor` (a CPU cluster's actors, score_stages.run_steps) audio references
    come back as file rows, and the decode step is returned for the actor to run first;
    Parquet windows are always read in tasks."""
    import ray.data

    from infer import score_stages as stages

    params = reference.params
    if reference.kind == "parquet":
        from ray.data.expressions import col

        from pipelines.storage import arrow_filesystem

        fs, path = arrow_filesystem(reference.uri, cfg.s3_endpoint_url)
        # Every stage says what it reserves: a default 1-CPU read could wait forever behind the actors.
        ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=io.num_cpus).select_columns(
            ["track_id", "split", "window", "bass", "drums"])
        ds = ds.filter(expr=col("split") == "test", num_cpus=io.num_cpus)
        return ds.map_batches(stages.parquet_reference_batch, batch_format="pyarrow", batch_size=64,
                              fn_kwargs={"params_dict": params.to_dict(), "baselines": bool(cfg.baselines),
                                         "seed": cfg.seed}, **io.map_args()), []
    ds = ray.data.from_items(stages.audio_reference_rows(reference.audio_rows, bool(cfg.baselines), cfg.seed))
    decode = (stages.audio_reference_batch,
              {"params_dict": params.to_dict(), "s3_endpoint_url": cfg.s3_endpoint_url})
    if decode_in_actor:
        return ds, [decode]
    return ds.map_batches(decode[0], batch_format="numpy", batch_size=CLIPS_PER_BLOCK, **io.map_args(),
                          fn_kwargs=decode[1]), []


def build_dataset(reference: ReferenceSet, sets: list[GeneratedSet], cfg: ScoreConfig, weights: str):
    """(the lazy dataset, the Inception actors' plan, their placement book).

    GPU: features on CPU tasks, Inception on the GPU actors.  CPU: one actor per core
    (score_stages.FeaturesInceptionActor) decodes audio references, computes the features
    and runs Inception; only Parquet windows are read in light tasks."""
    from cluster.resources import ResourceError, plan_model_stage
    from infer import score_stages as stages

    params = reference.params
    try:
        plan, book = plan_model_stage(cfg.resources, what="Inception", io_cpus=IO_CPUS)
    except ResourceError as err:
        raise ScoreError(str(err)) from err
    ds, before = reference_dataset(reference, cfg, plan.io, decode_in_actor=plan.device == "cpu")
    features = {"lookup": generated_lookup(sets), "params_dict": params.to_dict(),
                "s3_endpoint_url": cfg.s3_endpoint_url, "baselines": bool(cfg.baselines), "seed": cfg.seed}
    if plan.device == "cpu":
        # A few reference clips per call: the work spreads evenly over the actors.
        ds = ds.map_batches(stages.FeaturesInceptionActor,
                            fn_constructor_kwargs={"features": features, "before": before,
                                                   **inception_kwargs(params, cfg, weights, plan, book)},
                            batch_format="numpy", batch_size=CLIPS_PER_BLOCK, compute=plan.compute(),
                            **plan.remote_args())
        return ds, plan, book
    ds = ds.map_batches(stages.features_batch, batch_format="numpy", batch_size=8, num_cpus=1, fn_kwargs=features)
    return inception_stage(ds, params, cfg, weights, plan, book), plan, book


def inception_kwargs(params, cfg: ScoreConfig, weights: str, plan, book) -> dict:
    """The Inception actors' constructor arguments."""
    return {"weights": weights, "n_mels": params.n_mels, "window_frames": params.window_frames,
            "device": plan.device, "s3_endpoint_url": cfg.s3_endpoint_url, "batch_size": cfg.inception_batch,
            "placements": book, "torch_threads": plan.torch_threads}


def inception_stage(ds, params, cfg: ScoreConfig, weights: str, plan, book):
    """Feature rows through the Inception actor pool of `plan` (activations added, images dropped)."""
    from infer import score_stages as stages

    return ds.map_batches(stages.InceptionActor, fn_constructor_kwargs=inception_kwargs(params, cfg, weights, plan, book),
                          batch_format="numpy", batch_size=cfg.inception_batch, compute=plan.compute(),
                          **plan.remote_args())
