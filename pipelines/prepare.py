"""`cycledrums prepare`: a song catalog -> Parquet training windows, with Ray Data.

One row per track flows through the pipeline (one track per block, so a long song never
shares memory with others):

    catalog (driver: names only)
      -> decode: read the bytes, decode, mono, resample       CPU tasks
      -> separate (mixes only): Demucs, keep bass and drums     actor pool (cluster/resources.py)
      -> windows: mel / dB / uint8, 256x256 windows, drop       CPU tasks
         near-silent ones, write the track's Parquet file

Output (local folder or s3:// prefix):

    OUTPUT/train/<track>-<hash>.parquet    one file per track (the window contract of
    OUTPUT/test/<track>-<hash>.parquet     pipelines/windows.py), written atomically
    OUTPUT/_errors.csv                     track, path, stage, reason, outcome (this run's
                                           failures, and tracks kept with a warning)
    OUTPUT/_summary.json                   this run's counts, plus `dataset`: what OUTPUT holds

A track's Parquet file is its "done" marker: a re-run skips tracks whose file exists
(`overwrite=True` redoes them); failed tracks have no file and are tried again.  Readers
(pyarrow datasets, Ray Data, DuckDB) skip `_`- and `.`-prefixed names, so `OUTPUT` itself
reads as the window table.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import time
from dataclasses import dataclass, field

from cluster.resources import ResourceRequest
from cluster.errors import UserError
from pipelines.catalog import DEFAULT_TEST_FRACTION, Catalog, Track, build_catalog
from pipelines.mel import MelParams
from pipelines.separation import DEFAULT_MODEL
from pipelines.prepare_stages import (DemucsSeparator, decode_mix, decode_stems, existing_outputs, fail_row,
                                      remove_stale_temp_files, window_file_name, write_windows)
from pipelines.prepare_tally import PrepareTally
from pipelines.storage import fsspec_filesystem, is_local_filesystem, storage_errors, write_bytes_atomic
from pipelines.windows import DEFAULT_MIN_LEVEL_DB, SPLITS

log = logging.getLogger(__name__)

ERRORS_FILE = "_errors.csv"
SUMMARY_FILE = "_summary.json"
# outcome: "failed", "failed (transient: a re-run retries)", or "kept (warning)".
ERROR_COLUMNS = ("track", "path", "stage", "reason", "outcome")

class PrepareError(UserError):
    """A user error in the job's inputs or options (reported without a traceback)."""


@dataclass
class PrepareConfig:
    input: str
    output: str
    layout: str | None = None  # None: detect
    genres: list[str] | None = None
    tracks_csv: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    min_level_db: float = DEFAULT_MIN_LEVEL_DB
    # Frames between window starts; None: the codec's (window - overlap, 206).  A smaller stride
    # cuts more, overlapping windows from the same audio: time-shifted examples for a small
    # catalog such as a user's own multitrack songs.
    stride: int | None = None
    demucs_model: str = DEFAULT_MODEL
    num_cpus: float | None = None  # cap on logical CPUs the job uses; None: the cluster's
    overwrite: bool = False
    limit: int | None = None
    s3_endpoint_url: str | None = None
    address: str | None = None
    params: MelParams = field(default_factory=MelParams)
    resources: ResourceRequest = field(default_factory=ResourceRequest)  # the Demucs actors (mixes)


# ----------------------------------------------------------------- the job


def _pending_row(track: Track) -> dict:
    return {"track_id": track.track_id, "split": track.split, "path": track.path,
            "sources": json.dumps(track.sources), "status": "pending", "stage": "", "reason": "",
            "seconds": 0.0, "transient": False, "warning": ""}


def _catalog_failure(track: Track) -> dict:
    row = _pending_row(track)
    row.update(status="failed", stage="catalog", reason=track.error, windows=0, dropped=0)
    return row


def _cluster_plan(cfg: PrepareConfig, layout: str) -> tuple[dict, object]:
    """(resources of the job, placement book): the Demucs actor pool (mixes) per the shared policy."""
    import ray

    from cluster.resources import ResourceError, plan_model_stage

    resources = ray.cluster_resources()
    plan = {"gpus": resources.get("GPU", 0), "cpus": float(cfg.num_cpus or resources.get("CPU", 0)),
            "actors": None}
    if layout != "mixes":
        _note_no_model(cfg.resources)
        return plan, None
    try:
        # On CPU, Demucs is the slow stage: one actor (unless --actors) using
        # every CPU but one as torch threads; the decode / window tasks get the one left.
        actors, book = plan_model_stage(cfg.resources, what="Demucs", cpu_share=1.0,
                                        reserve_cpus=1.0, default_cpu_actors=1,
                                        cpu_limit=cfg.num_cpus)
    except ResourceError as err:
        raise PrepareError(str(err)) from err
    plan["actors"] = actors
    return plan, book


def _note_no_model(request: ResourceRequest) -> None:
    """Stems need no separation model: --device cuda / --actors / --gpus-per-actor have nothing to
    place.  Say so in one line rather than silently running on CPU."""
    asked = [f"--device {request.device}"] if request.device == "cuda" else []
    asked += ["--actors"] if request.actors else []
    asked += ["--gpus-per-actor"] if request.gpus_per_actor != 1.0 else []
    if asked:
        log.warning("%s: ignored for the stems layout, which runs no model (only Demucs on 'mixes' "
                    "uses them); its decode and window tasks run on CPU", ", ".join(asked))


# Tasks in flight per CPU the stems pipeline can use.  Without the per-operator reservation (see
# _run_pipeline) Ray Data submitted a task for every track at once, each holding its block in the
# driver: 2,000 tracks cost it +100 MB over 500.  Its tasks are short, so the queue must be deep:
# on 4 logical CPUs a pool of 8 ran 25% slower than none, a pool of 32 as fast (2,000 songs of 8 s).
TASKS_PER_CPU = 8


def stems_task_pool(cfg: PrepareConfig, n_tracks: int):
    """The stems pipeline's task pool: TASKS_PER_CPU per CPU the job may use, counting what the
    autoscaler may add (None, unbounded, when it may add without limit)."""
    import math

    import ray

    from cluster.cluster_view import cluster_view

    cpus = cluster_view().capacity("CPU")
    if cfg.num_cpus:
        cpus = min(cpus, cfg.num_cpus)
    if math.isinf(cpus):
        return None
    return ray.data.TaskPoolStrategy(size=int(min(n_tracks, max(1, TASKS_PER_CPU * cpus))))


def build_dataset(rows: list[dict], cfg: PrepareConfig, layout: str, plan: dict, placements=None):
    """The lazy Ray Data pipeline for the pending tracks (one track per block)."""
    import ray

    common = {"params": cfg.params, "s3_endpoint_url": cfg.s3_endpoint_url}
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    if layout == "stems":
        pool = stems_task_pool(cfg, len(rows))
        ds = ds.map_batches(decode_stems, batch_size=1, batch_format="pyarrow", num_cpus=1, compute=pool,
                            fn_kwargs=common)
    else:
        ds = ds.map_batches(decode_mix, batch_size=1, batch_format="pyarrow", num_cpus=1,
                            fn_kwargs=common)
        actors = plan["actors"]
        ds = ds.map_batches(
            DemucsSeparator,
            batch_size=1,
            batch_format="pyarrow",
            compute=actors.compute(),
            **actors.remote_args(),
            fn_constructor_kwargs={"model_spec": cfg.demucs_model, "params": cfg.params,
                                   "device": actors.device, "torch_threads": actors.torch_threads,
                                   "placements": placements},
        )
    return ds.map_batches(write_windows, batch_size=1, batch_format="pyarrow", num_cpus=1,
                          compute=pool if layout == "stems" else None,  # the same pool: the two stages fuse
                          fn_kwargs={"output": cfg.output, "params": cfg.params,
                                     "min_level_db": cfg.min_level_db, "stride": cfg.stride,
                                     "s3_endpoint_url": cfg.s3_endpoint_url})


def _run_pipeline(rows: list[dict], cfg: PrepareConfig, layout: str, tally: PrepareTally) -> dict:
    """Runs the pending tracks, each one's result row into `tally`; returns the resources summary."""
    from ray.data import DataContext, ExecutionResources

    from cluster.ray_runtime import init_ray
    from cluster.placement import broken_gpu_node_as, ending_placement_books, placement_summary, read_placements

    init_ray(cfg.address)
    plan, book = _cluster_plan(cfg, layout)
    log.info("processing %d tracks (%s layout) on %g CPUs, %g GPUs%s", len(rows), layout,
             plan["cpus"], plan["gpus"],
             f", Demucs: {plan['actors'].describe()}" if plan["actors"] else "")
    ctx = DataContext.get_current()
    saved = (ctx.execution_options.resource_limits, ctx.max_errored_blocks,
             ctx.op_resource_reservation_enabled)
    if cfg.num_cpus:
        ctx.execution_options.resource_limits = ExecutionResources.for_limits(cpu=cfg.num_cpus)
    # Stages turn bad tracks into rows themselves; a block that still errors (a worker killed
    # for memory, after Ray's retries) must not end the job: its track is reported below.
    ctx.max_errored_blocks = -1
    if layout == "stems":
        # The stems pipeline is ONE fused CPU operator.  Ray Data's per-operator reservation
        # (half the cluster split among operators, input included) held it to a single task
        # on a 2-CPU Ray: 1 -> 2 CPUs gave 1.1x.  Without it: 2.1x (benchmarks/bench_prepare.py).
        ctx.op_resource_reservation_enabled = False
    from cluster.console import Progress
    from cluster.node_watch import watching_nodes

    progress = Progress("prepare", len(rows), unit="tracks")
    with watching_nodes("prepare") as watch, ending_placement_books(book), broken_gpu_node_as(PrepareError):
        try:
            for row in build_dataset(rows, cfg, layout, plan, book).iter_rows():
                if row["status"] == "failed":
                    log.warning("%s: failed in %s: %s", row["track_id"], row["stage"], row["reason"])
                elif row["warning"]:
                    log.warning("%s: %s", row["track_id"], row["warning"])
                tally.add(row)
                progress.update(1, errors=int(row["status"] == "failed"))
        finally:
            (ctx.execution_options.resource_limits, ctx.max_errored_blocks,
             ctx.op_resource_reservation_enabled) = saved
        placements = read_placements(book)
    for row in rows:
        if row["track_id"] not in tally.returned:
            lost = dict(row, windows=0, dropped=0)
            fail_row(lost, "pipeline", "the Ray task for this track failed (worker crashed or ran out "
                  "of memory?); see the Ray Data logs; a re-run retries it")
            lost["transient"] = True
            tally.add(lost)
    resources = {"device": "cpu", "cpus": plan["cpus"], "gpus": plan["gpus"]}
    if plan["actors"]:
        resources = placement_summary(plan["actors"], placements)
    resources["nodes_lost"] = watch.summary()
    return resources


def summarize(cfg: PrepareConfig, catalog: Catalog, tally: PrepareTally, skipped: int,
              wall_seconds: float, resources: dict | None = None) -> dict:
    audio_seconds = tally.audio_seconds
    return {
        "input": cfg.input,
        "output": cfg.output,
        "layout": catalog.layout,
        "tracks_in_catalog": len(catalog.tracks),
        "tracks_filtered": len(catalog.filtered),
        "tracks_ok": tally.ok,
        "tracks_failed": tally.failed,
        "tracks_failed_transient": tally.failed_transient,
        "tracks_with_warnings": tally.warned,
        "tracks_skipped": skipped,
        "windows_written": tally.windows_written,
        "windows_dropped": tally.windows_dropped,
        "audio_hours": audio_seconds / 3600.0,
        "wall_seconds": wall_seconds,
        "audio_seconds_per_second": audio_seconds / wall_seconds if wall_seconds > 0 else 0.0,
        "splits": tally.splits,
        "min_level_db": cfg.min_level_db,
        "stride_frames": cfg.stride or cfg.params.stride_frames,
        "test_fraction": cfg.test_fraction,
        "mel_params": cfg.params.to_dict(),
        "errors_file": ERRORS_FILE,
        "device": (resources or {}).get("device", "cpu"),
        "resources": resources or {},
    }


def errors_csv(reported: list[dict]) -> bytes:
    """_errors.csv from the failed and warned tracks' rows."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(ERROR_COLUMNS)
    for r in reported:
        if r["status"] == "failed":
            outcome = "failed (transient: a re-run retries)" if r.get("transient") else "failed"
            writer.writerow([r["track_id"], r["path"], r["stage"], r["reason"], outcome])
        elif r.get("warning"):
            writer.writerow([r["track_id"], r["path"], "warning", r["warning"], "kept (warning)"])
    return out.getvalue().encode("utf-8")


def dataset_totals(output: str, s3_endpoint_url: str | None) -> dict:
    """What OUTPUT holds now, over every run: tracks and windows per split (Parquet footers only)."""
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem, storage_errors

    fs, root = arrow_filesystem(output, s3_endpoint_url)
    totals = {}
    with storage_errors("reading the window files of", output):
        for split in SPLITS:
            try:
                files = pads.dataset(posixpath.join(root, split), filesystem=fs, format="parquet").files
            except FileNotFoundError:
                files = []
            windows = sum(pads.dataset(f, filesystem=fs, format="parquet").count_rows() for f in files)
            totals[split] = {"tracks": len(files), "windows": windows}
    return totals


def preflight(cfg: PrepareConfig) -> tuple[PrepareConfig, Catalog]:
    """Every check that needs no Ray: options, paths (made absolute), OUTPUT, the Demucs
    model, the catalog.  Returns the config with resolved paths and the catalog."""
    from dataclasses import replace

    from pipelines.paths import check_output_outside_inputs
    from pipelines.storage import local_path_resolved

    if cfg.limit is not None and cfg.limit < 0:
        raise PrepareError(f"--limit must be >= 0, got {cfg.limit}")
    if cfg.num_cpus is not None and not cfg.num_cpus > 0:
        raise PrepareError(f"--num-cpus must be positive, got {cfg.num_cpus:g}")
    if cfg.stride is not None and not 1 <= cfg.stride <= cfg.params.window_frames:
        raise PrepareError(f"--stride must be 1 to {cfg.params.window_frames} frames (the window; more "
                           f"would skip audio between windows), got {cfg.stride}")
    cfg = replace(cfg, input=local_path_resolved(cfg.input), output=local_path_resolved(cfg.output),
                  tracks_csv=local_path_resolved(cfg.tracks_csv) if cfg.tracks_csv else None)
    check_output_outside_inputs(cfg.output, {"INPUT": cfg.input, "--tracks-csv": cfg.tracks_csv})
    out_fs, out_root = fsspec_filesystem(cfg.output, cfg.s3_endpoint_url)
    if out_fs.isfile(out_root):
        raise PrepareError(f"OUTPUT {cfg.output} is an existing file; give a folder (or s3:// prefix)")
    catalog = build_catalog(cfg.input, cfg.layout, cfg.genres, cfg.tracks_csv, cfg.test_fraction,
                            cfg.s3_endpoint_url)
    if catalog.layout == "mixes":
        from pipelines.separation import check_model

        # A bad path or an unreadable / unsafe model file fails now, not inside an actor.
        cfg = replace(cfg, demucs_model=check_model(cfg.demucs_model))
    return cfg, catalog


def run_prepare(cfg: PrepareConfig) -> dict:
    """Run the whole job; returns the summary (also written to OUTPUT/_summary.json)."""
    started = time.perf_counter()
    cfg, catalog = preflight(cfg)
    out_fs, out_root = fsspec_filesystem(cfg.output, cfg.s3_endpoint_url)
    if is_local_filesystem(out_fs):
        out_fs.makedirs(out_root, exist_ok=True)
    with storage_errors("listing", cfg.output):
        if remove_stale_temp_files(out_fs, out_root):
            log.info("removed temp files left by an interrupted run")
        done = {} if cfg.overwrite else existing_outputs(out_fs, out_root)
    todo = [t for t in catalog.tracks if window_file_name(t.track_id) not in done]
    skipped = len(catalog.tracks) - len(todo)
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    log.info("catalog: %d tracks (%s), %d filtered out, %d already done, %d to do",
             len(catalog.tracks), catalog.layout, len(catalog.filtered), skipped, len(todo))
    tally = PrepareTally()
    for track in todo:
        if track.error:
            tally.add(_catalog_failure(track))
    pending = [_pending_row(t) for t in todo if not t.error]
    resources = _run_pipeline(pending, cfg, catalog.layout, tally) if pending else None
    summary = summarize(cfg, catalog, tally, skipped, time.perf_counter() - started, resources)
    # The counts above are this run's; `dataset` is what OUTPUT holds after it (all runs).
    summary["dataset"] = dataset_totals(cfg.output, cfg.s3_endpoint_url)
    write_bytes_atomic(out_fs, posixpath.join(out_root, ERRORS_FILE), errors_csv(tally.reported))
    write_bytes_atomic(out_fs, posixpath.join(out_root, SUMMARY_FILE),
                       json.dumps(summary, indent=2).encode("utf-8"))
    return summary


def format_summary(summary: dict) -> str:
    s = summary
    held = " + ".join(f"{split} {v['tracks']} tracks / {v['windows']} windows"
                      for split, v in (s.get("dataset") or {}).items())
    transient = s.get("tracks_failed_transient")
    retry = f" ({transient} on storage faults: a re-run retries them)" if transient else ""
    warned = f", {s['tracks_with_warnings']} with warnings" if s.get("tracks_with_warnings") else ""
    return (
        f"tracks this run: {s['tracks_ok']} ok{warned}, {s['tracks_failed']} failed{retry}, "
        f"{s['tracks_skipped']} skipped (already done), {s['tracks_filtered']} filtered out\n"
        f"windows: {s['windows_written']} written "
        f"(train {s['splits']['train']['windows']}, test {s['splits']['test']['windows']}), "
        f"{s['windows_dropped']} dropped as near silent\n"
        f"audio: {s['audio_hours']:.3f} h in {s['wall_seconds']:.1f} s wall time = "
        f"{s['audio_seconds_per_second']:.1f} audio-seconds per second\n"
        f"output: {s['output']} (errors: {ERRORS_FILE}, summary: {SUMMARY_FILE})"
        + (f"\ndata set now: {held}" if held else "")
    )


def exit_problem(summary: dict) -> str | None:
    """Why the job must exit non-zero, or None: nothing in OUTPUT at all, or tracks that
    failed on storage faults (the data set is incomplete; a re-run retries them)."""
    d = summary.get("dataset") or {}
    if not sum(v["windows"] for v in d.values()):
        if summary["tracks_failed"]:
            why = ("every track failed" if not summary["windows_dropped"] else
                   "every track failed or had all its windows dropped as near silent "
                   "(see --min-level-db)")
        else:
            why = "no track to prepare"
        return f"nothing prepared: {why}; reasons in {ERRORS_FILE}"
    if summary.get("tracks_failed_transient"):
        return (f"{summary['tracks_failed_transient']} track(s) failed on storage / network faults "
                f"(see {ERRORS_FILE}); a re-run retries them")
    return None
