"""The window data set contract: one Parquet row per 256x256 bass/drums window pair.

Written by `cycledrums prepare`, read by training, generation and scoring, and by
any tool that reads Parquet (pyarrow, pandas, DuckDB, Spark): images are stored
as fixed-size binary (n_mels * window_frames bytes, row-major mel x frame, mel
bin 0 = lowest frequency), not as a Ray tensor extension type.

The file-level metadata key `cycledrums.mel_params` holds `MelParams` as JSON:
everything needed to turn an image back into sound.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipelines.mel import MelParams

METADATA_KEY = b"cycledrums.mel_params"
SPLITS = ("train", "test")


def image_bytes(params: MelParams = MelParams()) -> int:
    return params.n_mels * params.window_frames


def window_schema(params: MelParams = MelParams()) -> pa.Schema:
    """Arrow schema of the window table, with the mel parameters as metadata."""
    img = pa.binary(image_bytes(params))
    return pa.schema(
        [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("window", pa.int32(), nullable=False),
            pa.field("start_frame", pa.int32(), nullable=False),
            pa.field("bass", img, nullable=False),
            pa.field("drums", img, nullable=False),
            # Mean mel level of each window in dB (over the fixed range): the
            # loudness figure the near-silence filter uses.
            pa.field("bass_level_db", pa.float32(), nullable=False),
            pa.field("drums_level_db", pa.float32(), nullable=False),
        ],
        metadata={METADATA_KEY: params.to_json().encode()},
    )


def mel_params_from_schema(schema: pa.Schema) -> MelParams:
    meta = schema.metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(
            f"not a cycledrums window table: schema metadata has no {METADATA_KEY.decode()!r}"
        )
    return MelParams.from_json(meta[METADATA_KEY])


def images_to_binary(images: torch.Tensor | np.ndarray) -> pa.Array:
    """[n, n_mels, frames] uint8 -> fixed-size binary Arrow array."""
    arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ValueError(f"expected [n, mels, frames] uint8 images, got {arr.dtype} {arr.shape}")
    size = arr.shape[1] * arr.shape[2]
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(size), len(arr), [None, pa.py_buffer(np.ascontiguousarray(arr).tobytes())]
    )


def binary_to_images(column, params: MelParams = MelParams()) -> np.ndarray:
    """Fixed-size binary column (Arrow array/chunked array, or list of bytes) -> [n, mels, frames] uint8."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        flat = np.frombuffer(column.buffers()[1], dtype=np.uint8,
                             count=len(column) * image_bytes(params),
                             offset=column.offset * image_bytes(params))
    else:  # numpy object array / list of bytes (e.g. a Ray Data numpy batch)
        flat = np.frombuffer(b"".join(bytes(x) for x in column), dtype=np.uint8)
    return flat.reshape(-1, params.n_mels, params.window_frames)


# Windows whose mean mel power is below this (dB over the fixed range) count as
# near silent.  Full-scale music sits around +10..+30 dB; the floor is db_min.
DEFAULT_MIN_LEVEL_DB = -10.0


def window_level_db(images: torch.Tensor, params: MelParams = MelParams()) -> torch.Tensor:
    """[n, mels, frames] uint8 -> [n] loudness: dB of the mean mel power in each window."""
    from pipelines.mel import db_to_power, dequantize

    power = db_to_power(dequantize(images, params)).mean(dim=(-2, -1))
    return 10.0 * torch.log10(power)


def track_windows(track_id: str, split: str, bass: torch.Tensor, drums: torch.Tensor,
                  params: MelParams = MelParams(),
                  min_level_db: float = DEFAULT_MIN_LEVEL_DB,
                  stride: int | None = None) -> tuple[pa.Table, int]:
    """One track's paired bass / drums audio -> (window table, windows dropped as near silent).

    Both signals must be mono at params.sample_rate; the longer is cut to the
    shorter so bass and drums windows cover the same time span.  Only full
    windows are kept (see `window_starts`), one every `stride` frames (default
    the codec's; prepare's --stride).
    """
    from pipelines.mel import audio_to_image
    from pipelines.windowing import cut_windows

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = min(bass.shape[-1], drums.shape[-1])
    images = audio_to_image(torch.stack([bass[:n], drums[:n]]), params)  # [2, mels, frames]
    bass_w, starts = cut_windows(images[0], params, stride=stride)
    drums_w, _ = cut_windows(images[1], params, stride=stride)
    bass_level = window_level_db(bass_w, params)
    drums_level = window_level_db(drums_w, params)
    keep = (bass_level >= min_level_db) & (drums_level >= min_level_db)
    idx = keep.nonzero().flatten().tolist()
    schema = window_schema(params)
    table = pa.Table.from_arrays(
        [
            pa.array([track_id] * len(idx), pa.string()),
            pa.array([split] * len(idx), pa.string()),
            pa.array(idx, pa.int32()),
            pa.array([starts[i] for i in idx], pa.int32()),
            images_to_binary(bass_w[idx]),
            images_to_binary(drums_w[idx]),
            pa.array(bass_level[idx].numpy(), pa.float32()),
            pa.array(drums_level[idx].numpy(), pa.float32()),
        ],
        schema=schema,
    )
    return table, len(starts) - len(idx)
