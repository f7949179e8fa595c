"""The stages of `cycledrums prepare` (pipelines/prepare.py runs them as one Ray Data job):
decode (stems, or a mix), separate (Demucs, mixes only), cut and write each track's windows;
and how a track's output file is named and found again.

Each stage takes and returns an Arrow batch of track rows; a track that fails keeps flowing
to the end as a row with its stage and reason, so the job reports it instead of losing it.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath

import numpy as np
import pyarrow as pa

from pipelines.mel import MelParams
from pipelines.storage import TEMP_MARK, fsspec_filesystem, is_local_filesystem, read_bytes, write_bytes_atomic
from pipelines.windows import SPLITS

log = logging.getLogger(__name__)


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


def fail_row(row: dict, stage: str, err: BaseException | str) -> None:
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
                fail_row(row, "decode", err)
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
                fail_row(row, "decode", err)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=MIX_SCHEMA)


class DemucsSeparator:
    """Ray Data actor: loads the Demucs model once, separates one song per call."""

    def __init__(self, model_spec: str, params: MelParams, device: str, torch_threads: int = 1,
                 placements=None):
        from cluster.placement import claim_device
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
                    fail_row(row, "separate", err)
                finally:
                    if self.device == "cuda":
                        torch.cuda.empty_cache()
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=STEMS_SCHEMA)


class _NoWindows(Exception):
    """Every window of the track is near silent."""


def write_windows(batch: pa.Table, output: str, params: MelParams, min_level_db: float,
                  s3_endpoint_url: str | None, stride: int | None = None) -> pa.Table:
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
                                               _audio_tensor(drums), params, min_level_db, stride)
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
                fail_row(row, stage, str(err))
            except Exception as err:
                fail_row(row, stage, err)
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
