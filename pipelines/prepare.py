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
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from cluster.resources import ResourceRequest
from cluster.errors import UserError
from pipelines.catalog import DEFAULT_TEST_FRACTION, Catalog, Track, build_catalog
from pipelines.mel import MelParams
from pipelines.separation import DEFAULT_MODEL
from pipelines.storage import (TEMP_MARK, fsspec_filesystem, is_local_filesystem, read_bytes,
                               storage_errors, write_bytes_atomic)
from pipelines.windows import DEFAULT_MIN_LEVEL_DB, SPLITS

log = logging.getLogger(__name__)

ERRORS_FILE = "_errors.csv"
SUMMARY_FILE = "_summary.json"
# outcome: "failed", "failed (transient: a re-run retries)", or "kept (warning)".
ERROR_COLUMNS = ("track", "path", "stage", "reason", "outcome")

# What travels between stages.  Audio is raw float32 bytes (large_binary), never a Ray
# tensor column, and every stage keeps the bookkeeping columns so a failed track flows
# through to the end as a row with its stage and reason.
TRACK_FIELDS = [
    pa.field("track_id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("path", pa.string()),
    pa.field("sources", pa.string()),  # JSON {"bass": uri, "drums": uri} or {"mix": uri}
    pa.field("status", pa.string()),  # pending / ok / failed
    pa.field("stage", pa.string()),  # where it failed
    pa.field("reason", pa.string()),
    pa.field("seconds", pa.float64()),  # audio duration
    pa.field("transient", pa.bool_()),  # failed on a storage / network fault: a re-run retries
    pa.field("warning", pa.string()),  # kept, but with a problem worth knowing
]
TRACK_SCHEMA = pa.schema(TRACK_FIELDS)
STEMS_SCHEMA = pa.schema(TRACK_FIELDS + [pa.field("bass", pa.large_binary()),
                                         pa.field("drums", pa.large_binary())])
MIX_SCHEMA = pa.schema(TRACK_FIELDS + [pa.field("mix", pa.large_binary()),
                                       pa.field("mix_rate", pa.int64()),
                                       pa.field("mix_channels", pa.int64())])
RESULT_SCHEMA = pa.schema(TRACK_FIELDS + [pa.field("windows", pa.int64()),
                                          pa.field("dropped", pa.int64())])


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
    demucs_model: str = DEFAULT_MODEL
    separators: int | None = None  # Demucs actors (same as resources.actors=(N, N)); None: policy
    num_cpus: float | None = None  # cap on logical CPUs the job uses; None: the cluster's
    overwrite: bool = False
    limit: int | None = None
    s3_endpoint_url: str | None = None
    address: str | None = None
    params: MelParams = field(default_factory=MelParams)
    resources: ResourceRequest = field(default_factory=ResourceRequest)

    def resource_request(self) -> ResourceRequest:
        if self.separators is None:
            return self.resources
        if self.separators < 1:
            raise PrepareError(f"--separators must be at least 1, got {self.separators}")
        return replace(self.resources, actors=(self.separators, self.separators))


# ----------------------------------------------------------------- output naming


def window_file_name(track_id: str) -> str:
    """Track id -> a safe, unique, stable file name (readable part + hash of the exact id)."""
    from pipelines.clip_ids import file_stem

    return f"{file_stem(track_id)}.parquet"


def existing_outputs(fs, root: str) -> dict[str, str]:
    """{file name: split} of the window files already in OUTPUT (complete ones only)."""
    fs.invalidate_cache()
    done = {}
    for split in SPLITS:
        try:
            names = fs.ls(posixpath.join(root, split), detail=False)
        except FileNotFoundError:
            continue
        for name in names:
            base = posixpath.basename(name.rstrip("/"))
            if base.endswith(".parquet") and not base.startswith((".", "_")):
                done[base] = split
    return done


def remove_stale_temp_files(fs, root: str) -> int:
    """Delete temp files an interrupted local run left (they never look complete anyway)."""
    if not is_local_filesystem(fs):
        return 0
    removed = 0
    for split in SPLITS:
        folder = posixpath.join(root, split)
        if not fs.exists(folder):
            continue
        for name in fs.ls(folder, detail=False):
            base = posixpath.basename(name)
            if base.startswith(".") and TEMP_MARK in base:
                fs.rm(name)
                removed += 1
    return removed


# ----------------------------------------------------------------- stage helpers


def _fail(row: dict, stage: str, err: BaseException | str) -> None:
    from pipelines.audio import AudioError
    from pipelines.storage import is_transient

    transient = isinstance(err, BaseException) and is_transient(err)
    if isinstance(err, (AudioError, FileNotFoundError)) or transient:
        reason = str(err)  # these name the file or object themselves
    elif isinstance(err, BaseException):
        reason = f"{type(err).__name__}: {err}"
        log.debug("track %s failed in %s", row["track_id"], stage, exc_info=err)
    else:
        reason = err
    row.update(status="failed", stage=stage, reason=reason, transient=transient)


def _named_buffer(data: bytes, name: str) -> io.BytesIO:
    buf = io.BytesIO(data)
    buf.name = name  # error messages name the file, not "<in-memory audio>"
    return buf


def _check_long_enough(num_samples: int, rate: int, params: MelParams) -> None:
    from pipelines.audio import AudioError

    needed = params.window_samples / params.sample_rate
    seconds = num_samples / rate
    if seconds < needed:
        raise AudioError(f"too short: {seconds:.2f} s of audio, one window needs {needed:.2f} s")


def _decode_mono(uri: str, params: MelParams, s3_endpoint_url: str | None):
    """File -> mono float32 tensor at the codec's rate; AudioError when unusable
    (read_audio refuses truncated files and NaN/Inf samples for every job alike)."""
    from pipelines.audio import EmptyAudioError, check_not_silent, read_audio, to_mono_resampled

    data = read_bytes(uri, s3_endpoint_url)
    if not data:
        raise EmptyAudioError(f"{uri}: file is empty (0 bytes)")
    samples, rate = read_audio(_named_buffer(data, uri))
    signal = to_mono_resampled(samples, rate, params.sample_rate)
    check_not_silent(signal, uri)
    return signal


def _audio_bytes(signal) -> bytes:
    return np.ascontiguousarray(signal.numpy(), dtype=np.float32).tobytes()


def _audio_tensor(data: bytes):
    import torch

    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())


# ----------------------------------------------------------------- stages


def decode_stems(batch: pa.Table, params: MelParams, s3_endpoint_url: str | None) -> pa.Table:
    """Stems layout: bass and drums files -> mono audio at the codec's rate."""
    rows = []
    for row in batch.to_pylist():
        row.update(bass=b"", drums=b"")
        if row["status"] == "pending":
            try:
                sources = json.loads(row["sources"])
                bass = _decode_mono(sources["bass"], params, s3_endpoint_url)
                drums = _decode_mono(sources["drums"], params, s3_endpoint_url)
                n = min(bass.shape[-1], drums.shape[-1])
                _check_long_enough(n, params.sample_rate, params)
                row.update(bass=_audio_bytes(bass[:n]), drums=_audio_bytes(drums[:n]),
                           seconds=n / params.sample_rate)
            except Exception as err:  # a bad track becomes an error row; the job goes on
                _fail(row, "decode", err)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=STEMS_SCHEMA)


def decode_mix(batch: pa.Table, params: MelParams, s3_endpoint_url: str | None) -> pa.Table:
    """Mixes layout: song file -> float32 [channels, samples] at its own rate, for Demucs."""
    from pipelines.audio import SILENCE_PEAK, SilentAudioError, read_audio

    rows = []
    for row in batch.to_pylist():
        row.update(mix=b"", mix_rate=0, mix_channels=0)
        if row["status"] == "pending":
            try:
                uri = json.loads(row["sources"])["mix"]
                raw = read_bytes(uri, s3_endpoint_url)
                samples, rate = read_audio(_named_buffer(raw, uri))
                _check_long_enough(samples.shape[0], rate, params)
                peak = float(np.abs(samples).max())
                if peak < SILENCE_PEAK:
                    raise SilentAudioError(f"{uri}: signal is silent (peak {peak:.2e})")
                row.update(mix=np.ascontiguousarray(samples.T).tobytes(), mix_rate=rate,
                           mix_channels=samples.shape[1], seconds=samples.shape[0] / rate)
            except Exception as err:
                _fail(row, "decode", err)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=MIX_SCHEMA)


class DemucsSeparator:
    """Ray Data actor: loads the Demucs model once, separates one song per call."""

    def __init__(self, model_spec: str, params: MelParams, device: str, torch_threads: int = 1,
                 placements=None):
        from cluster.resources import claim_device
        from pipelines.separation import load_model

        self.params = params
        self.device = claim_device(device, "Demucs", placements, torch_threads)
        self.model = load_model(model_spec).to(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from pipelines.audio import check_not_silent
        from pipelines.separation import separate

        rows = []
        for row in batch.to_pylist():
            mix = row.pop("mix")
            rate, channels = row.pop("mix_rate"), row.pop("mix_channels")
            row.update(bass=b"", drums=b"")
            if row["status"] == "pending":
                try:
                    wav = _audio_tensor(mix).reshape(channels, -1)
                    stems = separate(self.model, wav, rate, self.params.sample_rate, self.device)
                    for name in ("bass", "drums"):
                        check_not_silent(stems[name], f"{row['path']}: separated {name}")
                    row.update(bass=_audio_bytes(stems["bass"]), drums=_audio_bytes(stems["drums"]))
                except Exception as err:
                    _fail(row, "separate", err)
                finally:
                    if self.device == "cuda":
                        torch.cuda.empty_cache()
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=STEMS_SCHEMA)


class _NoWindows(Exception):
    """Every window of the track is near silent."""


def write_windows(batch: pa.Table, output: str, params: MelParams, min_level_db: float,
                  s3_endpoint_url: str | None) -> pa.Table:
    """Bass + drums audio -> the track's window table -> OUTPUT/<split>/<file>.parquet (atomic)."""
    import pyarrow.parquet as pq

    from pipelines.windows import track_windows

    fs, root = fsspec_filesystem(output, s3_endpoint_url)
    rows = []
    for row in batch.to_pylist():
        bass, drums = row.pop("bass"), row.pop("drums")
        row.update(windows=0, dropped=0)
        if row["status"] == "pending":
            stage = "windows"
            try:
                table, dropped = track_windows(row["track_id"], row["split"], _audio_tensor(bass),
                                               _audio_tensor(drums), params, min_level_db)
                row["dropped"] = dropped
                if table.num_rows == 0:
                    raise _NoWindows(f"no window left: all {dropped} windows have bass or drums "
                                     f"below {min_level_db:g} dB (near silent)")
                stage = "write"
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink, compression="zstd")
                name = window_file_name(row["track_id"])
                write_bytes_atomic(fs, posixpath.join(root, row["split"], name),
                                   sink.getvalue().to_pybytes())
                # Written means done: what follows must not turn the track into a failure.
                row.update(status="ok", windows=table.num_rows)
                try:
                    _remove_from_other_splits(fs, root, row["split"], name)
                except Exception as err:  # noqa: BLE001 - a stale copy is reported, not fatal
                    row["warning"] = _join_warnings(
                        row["warning"], f"could not check {name} in the other split ({err}); "
                        "a re-run with --overwrite removes a stale copy")
            except _NoWindows as err:
                _fail(row, stage, str(err))
            except Exception as err:
                _fail(row, stage, err)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _join_warnings(*texts: str) -> str:
    return "; ".join(t for t in texts if t)


def _remove_from_other_splits(fs, root: str, split: str, name: str) -> None:
    # A redone track whose split changed (new --test-fraction) must not stay in both splits.
    for other in SPLITS:
        if other != split:
            stale = posixpath.join(root, other, name)
            if fs.exists(stale):
                fs.rm(stale)


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
        # On CPU, Demucs is the slow stage: one actor (unless --actors / --separators) using
        # every CPU but one as torch threads; the decode / window tasks get the one left.
        actors, book = plan_model_stage(cfg.resource_request(), what="Demucs", cpu_share=1.0,
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


def build_dataset(rows: list[dict], cfg: PrepareConfig, layout: str, plan: dict, placements=None):
    """The lazy Ray Data pipeline for the pending tracks (one track per block)."""
    import ray

    common = {"params": cfg.params, "s3_endpoint_url": cfg.s3_endpoint_url}
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    if layout == "stems":
        ds = ds.map_batches(decode_stems, batch_size=1, batch_format="pyarrow", num_cpus=1,
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
                          fn_kwargs={"output": cfg.output, "params": cfg.params,
                                     "min_level_db": cfg.min_level_db,
                                     "s3_endpoint_url": cfg.s3_endpoint_url})


def _run_pipeline(rows: list[dict], cfg: PrepareConfig, layout: str) -> tuple[list[dict], dict]:
    """(one result row per track, the resources summary)."""
    from ray.data import DataContext, ExecutionResources

    from cluster.ray_runtime import init_ray
    from cluster.resources import (broken_gpu_node_as, ending_placement_books, placement_summary,
                                   read_placements)

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

    results = []
    progress = Progress("prepare", len(rows), unit="tracks")
    with watching_nodes("prepare") as watch, ending_placement_books(book), broken_gpu_node_as(PrepareError):
        try:
            for row in build_dataset(rows, cfg, layout, plan, book).iter_rows():
                if row["status"] == "failed":
                    log.warning("%s: failed in %s: %s", row["track_id"], row["stage"], row["reason"])
                elif row["warning"]:
                    log.warning("%s: %s", row["track_id"], row["warning"])
                results.append(dict(row))
                progress.update(1, errors=int(row["status"] == "failed"))
        finally:
            (ctx.execution_options.resource_limits, ctx.max_errored_blocks,
             ctx.op_resource_reservation_enabled) = saved
        placements = read_placements(book)
    returned = {r["track_id"] for r in results}
    for row in rows:
        if row["track_id"] not in returned:
            lost = dict(row, windows=0, dropped=0)
            _fail(lost, "pipeline", "the Ray task for this track failed (worker crashed or ran out "
                  "of memory?); see the Ray Data logs; a re-run retries it")
            lost["transient"] = True
            results.append(lost)
    resources = {"device": "cpu", "cpus": plan["cpus"], "gpus": plan["gpus"]}
    if plan["actors"]:
        resources = placement_summary(plan["actors"], placements)
    resources["nodes_lost"] = watch.summary()
    return results, resources


def summarize(cfg: PrepareConfig, catalog: Catalog, results: list[dict], skipped: int,
              wall_seconds: float, resources: dict | None = None) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    audio_seconds = sum(r["seconds"] for r in ok)
    splits = {s: {"tracks": sum(r["split"] == s for r in ok),
                  "windows": sum(r["windows"] for r in ok if r["split"] == s)} for s in SPLITS}
    return {
        "input": cfg.input,
        "output": cfg.output,
        "layout": catalog.layout,
        "tracks_in_catalog": len(catalog.tracks),
        "tracks_filtered": len(catalog.filtered),
        "tracks_ok": len(ok),
        "tracks_failed": len(results) - len(ok),
        "tracks_failed_transient": sum(bool(r.get("transient")) for r in results
                                       if r["status"] == "failed"),
        "tracks_with_warnings": sum(bool(r.get("warning")) for r in ok),
        "tracks_skipped": skipped,
        "windows_written": sum(r["windows"] for r in ok),
        "windows_dropped": sum(r["dropped"] for r in results),
        "audio_hours": audio_seconds / 3600.0,
        "wall_seconds": wall_seconds,
        "audio_seconds_per_second": audio_seconds / wall_seconds if wall_seconds > 0 else 0.0,
        "splits": splits,
        "min_level_db": cfg.min_level_db,
        "test_fraction": cfg.test_fraction,
        "mel_params": cfg.params.to_dict(),
        "errors_file": ERRORS_FILE,
        "device": (resources or {}).get("device", "cpu"),
        "resources": resources or {},
    }


def errors_csv(results: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(ERROR_COLUMNS)
    for r in results:
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
    if cfg.separators is not None and cfg.separators < 1:
        raise PrepareError(f"--separators must be at least 1, got {cfg.separators}")
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
    results = [_catalog_failure(t) for t in todo if t.error]
    pending = [_pending_row(t) for t in todo if not t.error]
    resources = None
    if pending:
        done_rows, resources = _run_pipeline(pending, cfg, catalog.layout)
        results += done_rows
    summary = summarize(cfg, catalog, results, skipped, time.perf_counter() - started, resources)
    # The counts above are this run's; `dataset` is what OUTPUT holds after it (all runs).
    summary["dataset"] = dataset_totals(cfg.output, cfg.s3_endpoint_url)
    write_bytes_atomic(out_fs, posixpath.join(out_root, ERRORS_FILE), errors_csv(results))
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
