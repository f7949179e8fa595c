"""Per-step metrics (JSON lines) and spectrogram previews, written into RUN_DIR/logs.

Rank 0 writes them.  A local RUN_DIR is appended to as training goes (tail -f
works); for object storage (s3://) the log is kept in a local file and uploaded
whole at every checkpoint and at the end, since objects cannot be appended to.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile

import numpy as np

from pipelines.storage import fsspec_filesystem, is_remote

LOG_DIR = "logs"
METRICS = "metrics.jsonl"


def metrics_path(run_dir: str) -> str:
    return posixpath.join(run_dir.rstrip("/"), LOG_DIR, METRICS)


class RunLog:
    def __init__(self, run_dir: str, s3_endpoint_url: str | None = None):
        self.fs, root = fsspec_filesystem(run_dir, s3_endpoint_url)
        self.root = posixpath.join(root.rstrip("/"), LOG_DIR)
        self.remote = is_remote(run_dir)
        self.fs.makedirs(self.root, exist_ok=True)
        remote_metrics = posixpath.join(self.root, METRICS)
        if self.remote:
            # Keep earlier attempts' lines: start from what storage already has.
            self.local_metrics = os.path.join(tempfile.mkdtemp(prefix="cycledrums-log-"), METRICS)
            if self.fs.exists(remote_metrics):
                self.fs.get(remote_metrics, self.local_metrics)
            self.file = open(self.local_metrics, "a")
        else:
            self.file = open(remote_metrics, "a")

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps past `step` (the step training restarts from), so that a
        run resumed from a checkpoint logs each step once: steps an earlier attempt logged
        after its last checkpoint are trained again.  Returns how many lines were dropped."""
        self.file.close()
        path = self.local_metrics if self.remote else posixpath.join(self.root, METRICS)
        with open(path) as f:
            lines = f.readlines()
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if not _past(line, step)]
        if kept != lines:
            partial = f"{path}.truncating"
            with open(partial, "w") as f:
                f.writelines(kept)
            os.replace(partial, path)
        self.file = open(path, "a")
        return len(lines) - len(kept)

    def write(self, records: list[dict]) -> None:
        for record in records:
            self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def sync(self) -> None:
        """Make storage hold everything written so far."""
        self.file.flush()
        if self.remote:
            self.fs.put(self.local_metrics, posixpath.join(self.root, METRICS))

    def save_preview(self, name: str, bass: np.ndarray, real: np.ndarray,
                     fake: np.ndarray, title: str) -> None:
        """A PNG grid: one row per window, columns bass | true drums | generated drums."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = len(bass)
        fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
        for r in range(rows):
            for c, (label, image) in enumerate(
                    [("bass", bass[r]), ("true drums", real[r]), ("generated drums", fake[r])]):
                ax = axes[r][c]
                ax.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=255)
                ax.set_title(label, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        with self.fs.open(posixpath.join(self.root, name), "wb") as f:
            f.write(buffer.getvalue())

    def close(self) -> None:
        self.sync()
        self.file.close()


def _past(line: str, step: int) -> bool:
    """Is this log line a record of a step after `step`?  (A line cut off by a kill is dropped.)"""
    if not line.strip():
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return True
    return isinstance(record, dict) and int(record.get("step") or 0) > step


def read_metrics(run_dir: str, s3_endpoint_url: str | None = None) -> list[dict]:
    fs, path = fsspec_filesystem(metrics_path(run_dir), s3_endpoint_url)
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as f:
        return [json.loads(line) for line in f if line.strip()]
