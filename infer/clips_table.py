"""The per-clip table of `score` / `evaluate` (OUTPUT/clips.parquet + clips.csv), never whole in memory.

The driver holds a light table: per scored row its ids, the scalar features, densities, grades,
predictions and timings (what the summary, the ladder, the report and the grading sheet read).
Each row's 256 STOI-like correlations wait in the features spill (infer.score_rows) and join
their row only here, a chunk at a time: for the grader's inputs, and when the table is written
(to a local file first, then uploaded whole, so OUTPUT never holds a partial table).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from infer.features import stoi_names
from infer.score_rows import SCALAR_FEATURES, StreamedRows
from pipelines.storage import write_file

# Rows per chunk when a table is written or graded: about 2 MB of features a chunk.
WRITE_CHUNK = 2048


def grader_matrix(light, features: np.ndarray, names: list[str], n_mels: int) -> np.ndarray:
    """[rows, len(names)] float64: the grader's inputs for rows of the light table (`light`, a
    slice of it) whose mel features are `features` (the same rows, in order)."""
    stoi = {name: i for i, name in enumerate(stoi_names(n_mels))}
    columns = [features[:, stoi[n]] if n in stoi else light[n].to_numpy() for n in names]
    return np.stack(columns, axis=1).astype(np.float64) if columns else np.zeros((len(light), 0))


def grader_chunks(table, rows: StreamedRows, names: list[str], n_mels: int, chunk: int = WRITE_CHUNK):
    """(first row, the grader's inputs of the rows from there), chunk by chunk in row order."""
    for start, features in rows.feature_chunks(chunk):
        yield start, grader_matrix(table.iloc[start:start + len(features)], features, names, n_mels)


def full_chunk(light, features: np.ndarray, n_mels: int):
    """A chunk of the clips table as users read it: the STOI-like columns before stoi_mean."""
    import pandas as pd

    at = list(light.columns).index(SCALAR_FEATURES[0])
    stoi = pd.DataFrame(features[:, :n_mels], columns=stoi_names(n_mels), index=light.index)
    return pd.concat([light.iloc[:, :at], stoi, light.iloc[:, at:]], axis=1)


def write_clips_table(table, rows: StreamedRows, n_mels: int, output: str, s3_endpoint_url: str | None,
                      name: str = "clips") -> list[str]:
    """OUTPUT/<name>.parquet and .csv from the light table and the spilled features; returns the URIs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from infer.job_io import join_uri

    uris = [join_uri(output, f"{name}.parquet"), join_uri(output, f"{name}.csv")]
    with tempfile.TemporaryDirectory(prefix="cycledrums-clips-") as folder:
        local = [os.path.join(folder, f"{name}.parquet"), os.path.join(folder, f"{name}.csv")]
        parquet = csv = schema = None
        try:
            for start, features in rows.feature_chunks(WRITE_CHUNK):
                chunk = full_chunk(table.iloc[start:start + len(features)], features, n_mels)
                part = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
                if schema is None:
                    schema = part.schema
                    parquet, csv = pq.ParquetWriter(local[0], schema), pacsv.CSVWriter(local[1], schema)
                parquet.write_table(part)
                csv.write_table(part)
            if schema is None:  # no scored row: the header alone
                empty = pa.Table.from_pandas(full_chunk(table, np.zeros((0, n_mels), np.float32), n_mels),
                                             preserve_index=False)
                pq.write_table(empty, local[0])
                pacsv.write_csv(empty, local[1])
        finally:
            for writer in (parquet, csv):
                if writer is not None:
                    writer.close()
        for path, uri in zip(local, uris):
            write_file(uri, path, s3_endpoint_url)
    return uris
