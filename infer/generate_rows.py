"""The rows generate's stages hand each other: one per clip, in columnar numpy batches.

Decode fills a clip's bass image (`bass_input`), the generator actor its drums image and
the audio of both at the mel rate, render turns them into files.  A clip that failed a
stage carries its `error` and `stage` on, and the later stages pass it by.
"""
from __future__ import annotations

import numpy as np

ROW_DEFAULTS = {
    "clip_id": "", "input": "", "error": "", "stage": "",
    "bass_input": b"",  # uint8 [n_mels, n_frames]: the generator's input image
    "n_windows": 0, "n_frames": 0, "model_samples": 0, "input_rate": 0, "input_samples": 0,
    "channels": 0, "bass_from_mel": False, "seconds_decode": 0.0, "seconds_generate": 0.0,
    "transient": False,
    # filled when the generator actor inverts: stitched drum image, audio at the mel rate
    "drums_image": b"", "drums_audio": b"", "bass_audio": b"", "seconds_stitch": 0.0, "seconds_invert": 0.0,
}


def to_columns(rows: list[dict]) -> dict:
    """List of row dicts -> columnar numpy batch (object arrays for strings and bytes)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = np.array(values, dtype=object) if isinstance(values[0], (str, bytes)) else np.array(values)
    return out


def empty_columns() -> dict:
    """The columns of a batch with no rows."""
    return {k: np.array([], dtype=object if isinstance(v, (str, bytes)) else type(v))
            for k, v in ROW_DEFAULTS.items()}


def to_rows(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: batch[k][i] for k in keys} for i in range(n)]


def new_row(**values) -> dict:
    row = dict(ROW_DEFAULTS)
    row.update(values)
    return row


def row_image(row: dict, key: str, params):
    """The row's uint8 [n_mels, n_frames] image in column `key` ("bass_input", "drums_image")."""
    import torch

    return torch.frombuffer(bytearray(row[key]), dtype=torch.uint8).reshape(params.n_mels, int(row["n_frames"]))
