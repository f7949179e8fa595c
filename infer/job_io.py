"""Shared bits of the Ray Data jobs in infer/: the block size in front of actor pools, output paths
and table writes.

Where model actors run is cluster/resources.py's policy, shared with prepare and train.
"""
from __future__ import annotations

import logging
import os

from pipelines.storage import write_bytes

log = logging.getLogger(__name__)
# Clips per block in front of a CPU actor pool: Ray Data hands a block (or a batch_size
# bundle of blocks) whole to one actor, so a 16-clip batch gives all of a small job to one
# actor while the other cores wait (measured in evaluate: one Inception actor of two busy).
CLIPS_PER_BLOCK = 2

def remove_quietly(uri: str, s3_endpoint_url: str | None = None) -> None:
    """Delete a file if it exists (cleaning up a clip whose outputs were only partly written)."""
    from pipelines.storage import fsspec_filesystem

    try:
        fs, inner = fsspec_filesystem(uri, s3_endpoint_url)
        if fs.isfile(inner):
            fs.rm(inner)
    except (OSError, ValueError):
        log.warning("could not remove the partial output %s", uri)

def join_uri(root: str, *parts: str) -> str:
    import posixpath

    if "://" in root:
        return posixpath.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)

def write_table(table, root: str, name: str, s3_endpoint_url: str | None = None) -> list[str]:
    """Write a pyarrow table as `name`.parquet and `name`.csv under `root`; returns the URIs."""
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    pq_buf = io.BytesIO()
    pq.write_table(table, pq_buf)
    csv_buf = io.BytesIO()
    pacsv.write_csv(table, csv_buf)
    uris = [join_uri(root, f"{name}.parquet"), join_uri(root, f"{name}.csv")]
    write_bytes(uris[0], pq_buf.getvalue(), s3_endpoint_url)
    write_bytes(uris[1], csv_buf.getvalue(), s3_endpoint_url)
    return uris
