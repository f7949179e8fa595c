"""Per-step metrics (JSON lines) and spectrogram previews, written into RUN_DIR/logs.

Rank 0 writes them; `MetricsBuffer` holds a worker's per-step losses until a record is due.  A local RUN_DIR is appended to as training goes (tail -f
works); for object storage (s3://) the log is kept in a local file and uploaded
whole at every checkpoint and at the end, since objects cannot be appended to.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import sys
import tempfile
import time

import numpy as np

from cluster.console import format_duration
from pipelines.storage import fsspec_filesystem, is_remote

LOG_DIR = "logs"
METRICS = "metrics.jsonl"
LOG_INTERVAL_S = 30.0  # a progress line about this often when --log-every is not given


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


class MetricsBuffer:
    """A worker's per-step losses, kept on its device until a progress line is due.

    Reading losses back to the host waits for the device, so `flush` reads every pending
    step in one go.  Only rank 0 has a log: other workers drop their steps unread.
    """

    def __init__(self, log: RunLog | None, loss_names: tuple[str, ...], *, samples_per_step: int,
                 steps_per_epoch: int, total_steps: int, stop_at: int, log_every: int | None):
        self.log, self.loss_names = log, loss_names
        self.samples_per_step = samples_per_step  # batch size x workers
        self.steps_per_epoch, self.total_steps, self.stop_at = steps_per_epoch, total_steps, stop_at
        self.log_every = log_every
        self.pending: list[tuple] = []  # (step, lr, stacked losses, end time) not yet logged
        self.last_time = time.perf_counter()  # of the last flush that logged
        self.last_losses: dict[str, float] = {}
        self.samples_per_s = 0.0

    def add(self, step: int, lr: float, losses: dict) -> None:
        import torch  # here: readers of the log (read_metrics) need no torch

        stacked = torch.stack([losses[k] for k in self.loss_names])
        self.pending.append((step, lr, stacked, time.time()))

    def due(self, step: int) -> bool:
        if self.log_every is not None:
            return step % self.log_every == 0
        return time.perf_counter() - self.last_time >= LOG_INTERVAL_S

    def flush(self) -> None:
        """Log the pending steps (one record each) and print a progress line."""
        if not self.pending:
            return
        if self.log is None:  # only rank 0 logs: other workers skip the host sync
            self.pending.clear()
            return
        import torch

        now = time.perf_counter()
        samples_per_s = len(self.pending) * self.samples_per_step / max(now - self.last_time, 1e-9)
        values = torch.stack([p[2] for p in self.pending]).float().cpu().tolist()  # one sync
        self.log.write([{"step": s, "epoch": (s - 1) // self.steps_per_epoch, "lr": lr,
                         **dict(zip(self.loss_names, v)), "samples_per_s": samples_per_s,
                         "time": ended}
                        for (s, lr, _, ended), v in zip(self.pending, values)])
        self._say_progress(values[-1], samples_per_s)
        self.last_time, self.samples_per_s = now, samples_per_s
        self.last_losses = dict(zip(self.loss_names, values[-1]))
        self.pending.clear()

    def _say_progress(self, losses: list[float], samples_per_s: float) -> None:
        done, lr = self.pending[-1][0], self.pending[-1][1]
        summary = " ".join(f"{k} {x:.3f}" for k, x in zip(self.loss_names, losses))
        steps_per_s = samples_per_s / self.samples_per_step
        say(f"step {done}/{self.total_steps} epoch {(done - 1) // self.steps_per_epoch} {summary} "
            f"lr {lr:.3g} {samples_per_s:.2f} samples/s "
            f"ETA {format_duration((self.stop_at - done) / max(steps_per_s, 1e-9))}")

    def report(self, step: int, lr: float) -> dict:
        """The metrics a checkpoint reports: its step, and the last logged losses and rate."""
        return {"step": step, "epoch": step // self.steps_per_epoch, "lr": lr,
                "samples_per_s": self.samples_per_s, **self.last_losses}


def say(message: str) -> None:
    """A progress line on the worker's stdout."""
    # Not print(): Ray Train patches print to also log, which shows every line twice.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


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
