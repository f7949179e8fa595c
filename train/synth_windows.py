"""A small window data set straight from the procedural songs, for tests, demos and benchmarks.

`cycledrums prepare` is the real way to build window data (Ray Data over audio
files); this renders `pipelines.synth` songs in memory and writes the same
Parquet contract with plain pyarrow, so training can be exercised in seconds.
"""
from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.mel import MelParams
from pipelines.storage import arrow_filesystem
from pipelines.synth import plan_dataset, render_song
from pipelines.windows import track_windows, window_schema


def synth_window_table(tracks: int = 6, seconds: float = 16.0, params: MelParams = MelParams(),
                       seed: int = 0) -> pa.Table:
    """Window rows of `tracks` procedural songs (about a third in the test split)."""
    tables = []
    for plan in plan_dataset(tracks, seed):
        stems = render_song(plan, seconds, rate=params.sample_rate)
        bass = torch.from_numpy(stems["bass"]).float()
        drums = torch.from_numpy(stems["drums"]).float()
        # One gain per song (as the synth writer does), keeping bass/drums levels related.
        gain = 0.9 / max(1e-9, float((bass + drums).abs().max()))
        table, _ = track_windows(plan.name, plan.split, bass * gain, drums * gain, params)
        tables.append(table)
    return pa.concat_tables(tables) if tables else window_schema(params).empty_table()


def write_synth_windows(uri: str, tracks: int = 6, seconds: float = 16.0,
                        params: MelParams = MelParams(), seed: int = 0,
                        s3_endpoint_url: str | None = None) -> pa.Table:
    """Write the synth windows as `uri`/part-0.parquet (local or s3://); returns the table."""
    table = synth_window_table(tracks, seconds, params, seed)
    fs, path = arrow_filesystem(uri, s3_endpoint_url)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, posixpath.join(path, "part-0.parquet"), filesystem=fs)
    return table
