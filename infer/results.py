"""The results-commit protocol of the jobs that write a result set into OUTPUT (evaluate, score,
generate): a killed job leaves either the previous complete set or a folder marked incomplete,
never new files beside an old summary that looks complete.

A result set is a known list of entries (files and folders) of OUTPUT.  Each file is written
atomically (storage.write_bytes), but a set cannot be renamed into place in one step: S3 has
no rename, and Ray workers write audio straight into OUTPUT while the job runs.  So the set
is committed with a marker:

1. `begin()`, before the job writes its first result file: OUTPUT/_INCOMPLETE.json is written
   (job, host, pid, start time), then the previous run's entries are moved aside into
   OUTPUT/_previous/ (an older _previous/ is deleted first).  From here on the folder says
   it is incomplete, and the last complete set is in _previous/.
2. The job writes its files, summary.json among the last.
3. `commit()`: the marker is deleted (the commit point: the set in OUTPUT is complete), then
   _previous/.

A job that fails or is killed between 1 and 3 leaves the marker.  The next run into the same
OUTPUT finishes what the killed one left: if it was still moving the previous set aside
(`"phase": "moving"`), the rest is moved; if it was writing (`"phase": "writing"`), its
partial entries are deleted; _previous/ (the last complete set) is kept until the next commit.
Readers refuse a folder holding the marker (`check_complete`).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import posixpath
import socket

from cluster.errors import UserError
from pipelines.storage import (StorageError, fsspec_filesystem, is_local_filesystem, read_bytes, storage_errors,
                               write_bytes_atomic)

log = logging.getLogger(__name__)

INCOMPLETE = "_INCOMPLETE.json"
PREVIOUS = "_previous"

# summary.json first: once it is gone from OUTPUT, nothing there looks like a complete set.
SCORE_RESULTS = ("summary.json", "report.html", "clips.parquet", "clips.csv", "errors.parquet", "errors.csv",
                 "grader.joblib", "grader.json", "grader.npz", "buckets.png", "grades.png", "features.png",
                 "media")
EVALUATE_RESULTS = SCORE_RESULTS + ("audio",)
GENERATE_RESULTS = ("summary.json", "manifest.parquet", "manifest.csv", "errors.parquet", "errors.csv")


class ResultsIncomplete(UserError):
    """A folder that a killed or failed job left marked incomplete was given as an input."""


def check_complete(uri: str, what: str, s3_endpoint_url: str | None = None) -> None:
    """Refuse a result folder that holds the incomplete marker."""
    fs, root = fsspec_filesystem(uri, s3_endpoint_url)
    with storage_errors("checking", uri):
        marked = fs.exists(posixpath.join(root.rstrip("/"), INCOMPLETE))
    if marked:
        raise ResultsIncomplete(
            f"{what} {uri} is marked incomplete ({INCOMPLETE}: the job writing it failed or was killed); "
            f"run that job again, or use its last complete results in {PREVIOUS}/")


class ResultSet:
    """OUTPUT's result set for one job run: `begin()` before writing, `commit()` after."""

    def __init__(self, output: str, names, job: str, s3_endpoint_url: str | None = None):
        self.output = output
        self.names = list(dict.fromkeys(names))
        self.job = job
        self.s3_endpoint_url = s3_endpoint_url
        self.fs, root = fsspec_filesystem(output, s3_endpoint_url)
        self.root = root.rstrip("/") or root
        self.local = is_local_filesystem(self.fs)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _marker(self) -> dict | None:
        try:
            # read_bytes retries a read cut in the middle of its body, as every job's reads are
            marker = json.loads(read_bytes(self.fs.unstrip_protocol(self._path(INCOMPLETE)), self.s3_endpoint_url))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return marker if isinstance(marker, dict) else {}

    def _write_marker(self, phase: str, names: list[str]) -> None:
        marker = {"job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "phase": phase, "names": names,
                  "meaning": f"this folder's results are incomplete: a {self.job} run did not finish; "
                             f"the last complete results are in {PREVIOUS}/"}
        write_bytes_atomic(self.fs, self._path(INCOMPLETE), json.dumps(marker, indent=2).encode())

    def _present(self, names) -> list[str]:
        return [n for n in names if self.fs.exists(self._path(n))]

    def _remove(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def _move_aside(self, name: str) -> None:
        """OUTPUT/name -> OUTPUT/_previous/name; idempotent, so a killed move can be redone."""
        src, dst = self._path(name), self._path(PREVIOUS, name)
        if self.local:  # one atomic rename, file or folder
            if os.path.isdir(dst):
                self.fs.rm(dst, recursive=True)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
            return
        files = self.fs.find(src) if self.fs.isdir(src) else [src]
        for f in files:  # copy, then delete: a file is never only half moved
            self.fs.copy(f, dst + f[len(src):])
            self.fs.rm_file(f)

    def begin(self) -> None:
        if self.local:
            os.makedirs(self.root, exist_ok=True)
        with storage_errors("preparing", self.output):
            self.fs.invalidate_cache()  # listings cached earlier in this process may be stale
            marker = self._marker()
            if marker is None:  # OUTPUT holds a complete set, or none
                previous = self._present(self.names)
                if previous:
                    self._remove(self._path(PREVIOUS))
                    self._write_marker("moving", previous)
                    for name in previous:
                        self._move_aside(name)
            else:  # a run that did not finish left the folder marked incomplete
                log.warning("%s was left incomplete by an earlier %s run (%s); cleaning up", self.output,
                            marker.get("job", "unknown"), marker.get("started", "start time unknown"))
                names = list(dict.fromkeys(list(marker.get("names") or []) + self.names))
                if marker.get("phase") == "moving":
                    for name in self._present(names):
                        self._move_aside(name)
                else:
                    for name in self._present(names):
                        self._remove(self._path(name))
            self._write_marker("writing", self.names)

    def commit(self) -> None:
        with storage_errors("committing", self.output):
            self.fs.invalidate_cache()
            self.fs.rm_file(self._path(INCOMPLETE))
            self._remove(self._path(PREVIOUS))


def generate_results(output: str, clip_ids, s3_endpoint_url: str | None = None) -> ResultSet:
    """generate's result set: its tables and summary, and the clip folders of this run (`clip_ids`)
    and of the previous one (from its manifest)."""
    import io

    import pyarrow.parquet as pq

    fs, root = fsspec_filesystem(output, s3_endpoint_url)
    previous: list[str] = []
    with storage_errors("reading the previous manifest in", output):
        try:
            data = read_bytes(fs.unstrip_protocol(posixpath.join(root.rstrip("/"), "manifest.parquet")),
                              s3_endpoint_url)
            table = pq.read_table(io.BytesIO(data), columns=["clip_id"])
            previous = table.column("clip_id").to_pylist()
        except StorageError:
            raise
        except (FileNotFoundError, ValueError, KeyError, OSError):
            previous = []  # no previous set, or not one of ours: its clip folders are left alone
    folders = [str(c).strip("/").split("/")[0] for c in list(clip_ids) + previous if str(c).strip("/")]
    folders = [f for f in folders if f not in ("", ".", "..", PREVIOUS, INCOMPLETE)]
    return ResultSet(output, list(GENERATE_RESULTS) + folders, "generate", s3_endpoint_url)
