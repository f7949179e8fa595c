"""One training run at a time in a run folder: RUN_DIR/run.lock.

`train()` holds the lock from before Ray Train starts until the run ends, finished or failed
(a `finally` deletes it).  The lock is one small JSON object, {"host", "pid", "started",
"token"}, created only if it does not exist yet, in one atomic step:

* local: the JSON is written to a hidden temporary file, then hard-linked to `run.lock`
  (link() fails when the name exists), so the lock never exists half-written;
* S3: a PUT with `If-None-Match: *` (a conditional write: S3 refuses it with 412 when the
  object exists).

A second run finds the lock and stops with a `RunLocked` user error naming the holder (host,
pid, start time) and how to break a stale lock.  A lock whose holder ran on this host and is
no longer running (killed with SIGKILL, the machine rebooted...) is stale: it is broken
automatically, with a warning.  A lock from another host cannot be checked from here: if
that run is over, delete RUN_DIR/run.lock by hand.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import posixpath
import socket
import uuid

from cluster.errors import UserError
from pipelines.storage import fsspec_filesystem, is_local_filesystem, storage_errors

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunLocked(UserError):
    """Another run holds RUN_DIR's lock."""


def lock_uri(run_dir: str) -> str:
    return posixpath.join(run_dir.rstrip("/"), LOCK_NAME) if "://" in run_dir else \
        os.path.join(run_dir, LOCK_NAME)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def is_stale(holder: dict) -> bool:
    """True when the holder ran on this host and its process is gone."""
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    return holder.get("host") == socket.gethostname() and pid != os.getpid() and not _pid_running(pid)


def _create(fs, path: str, data: bytes) -> bool:
    """Create `path` holding `data` if it does not exist; False when it does."""
    if not is_local_filesystem(fs):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f".{LOCK_NAME}.tmp-{uuid.uuid4().hex[:12]}")
    with open(temp, "wb") as f:
        f.write(data)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)
    return True


def _read(fs, path: str) -> dict | None:
    """The lock's holder; None when there is no lock; {} when it cannot be read."""
    try:
        holder = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    if not holder:
        return "an unknown run (the lock cannot be read)"
    return (f"the run of pid {holder.get('pid')} on host {holder.get('host')}, "
            f"started {holder.get('started')}")


def acquire(run_dir: str, s3_endpoint_url: str | None = None, job: str = "train") -> dict:
    """Take RUN_DIR's lock; returns this run's lock record.  RunLocked when another run holds it."""
    uri = lock_uri(run_dir)
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "job": job,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}
    data = json.dumps(mine).encode()
    with storage_errors("locking", uri):
        for _ in range(3):
            if _create(fs, path, data):
                return mine
            holder = _read(fs, path)
            if holder is None:  # released meanwhile: try again
                continue
            if not is_stale(holder):
                raise RunLocked(
                    f"RUN_DIR {run_dir} is in use by {describe(holder)}; wait for that run to end, or, if it "
                    f"is no longer running (killed, its machine gone), delete {uri} and start again")
            log.warning("breaking the stale lock %s of %s (no such process on this host)", uri, describe(holder))
            if _read(fs, path) == holder:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(path)
    raise RunLocked(f"RUN_DIR {run_dir}: could not take the lock {uri} (other runs keep taking it)")


def release(run_dir: str, mine: dict, s3_endpoint_url: str | None = None) -> None:
    """Delete RUN_DIR's lock if it is still this run's (a broken-and-retaken lock is left alone)."""
    uri = lock_uri(run_dir)
    fs, path = fsspec_filesystem(uri, s3_endpoint_url)
    with storage_errors("unlocking", uri):
        holder = _read(fs, path)
        if holder and holder.get("token") == mine["token"]:
            fs.rm_file(path)
        elif holder is not None:
            log.warning("the lock %s is no longer this run's (now %s); left in place", uri, describe(holder))


@contextlib.contextmanager
def run_lock(run_dir: str, s3_endpoint_url: str | None = None, job: str = "train"):
    """Hold RUN_DIR's lock for the block; released however the block ends."""
    mine = acquire(run_dir, s3_endpoint_url, job)
    try:
        yield mine
    finally:
        release(run_dir, mine, s3_endpoint_url)
