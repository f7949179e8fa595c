"""What a person sees while a job runs: one plan line, progress lines with an ETA, warnings that
matter, a summary; Ray's internal chatter filtered out (`-v` shows everything).

Ray forwards every worker's stdout/stderr to the driver.  Much of it is Ray talking to itself:
Ray Train's controller narrating worker-group start-up, a placement-group cleaner that cannot
reach the state API of a local Ray started without a dashboard (a traceback per run, then a
warning every few seconds), the raylet counting worker processes on a small machine, the core
worker's note about restartable actors.  None of it is actionable for a user of this project,
so the driver drops those lines before they are printed.  Everything else from workers, and all
warnings and errors of our own code, still reach the console.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings

log = logging.getLogger(__name__)

# Actors of Ray's own whose output is never useful on our console.
# SplitCoordinator / DatasetManager: Ray Train's feeders of each worker's data shard, which
# narrate every epoch's pipeline (plan, start, finish) and Ray Data's own deprecations.
NOISY_ACTORS = ("PlacementGroupCleaner", "SplitCoordinator", "DatasetManager")
# Lines from Ray's internals, by pattern (matched anywhere in the line).
NOISY_LINES = tuple(re.compile(p) for p in (
    r"Requesting resources: \{",
    r"Attempting to start training worker group",
    r"Started training worker group of size",
    r"^- \(ip=\S+, pid=\d+\) world_rank=",
    r"Setting up process group for:",
    r"Moving model to device:",
    r"Wrapping provided model in DistributedDataParallel",
    r"Reporting training result \d+: TrainingReport",
    r"Checkpoint successfully created at:",
    r"Failed to query Ray Train Controller actor state",
    r"PlacementGroupCleaner",
    r"core_worker\.cc:\d+: Actor with class name: .* max_restarts > 0",
    r"PYTHON worker processes have been started on node",
    r"Progress will be logged because stdout is a non-interactive terminal",
    # The GCS, as a job's actors are torn down, about an actor that never existed or whose
    # process had already exited ("KillActor RPC failed ... Socket closed").
    r"gcs_actor_scheduler\.cc:\d+: Failed to kill actor ",
))
# Python warnings of Ray's that describe its scheduling, not a problem with the job: a small
# job (fewer blocks than model actors) leaves some actors idle, which is expected.
NOISY_WARNINGS = (r"The minimum number of concurrent actors for .* is set to",
                  # the I/O tasks' cap of two (cluster.resources.IOTasks) on a small job
                  r"The maximum number of concurrent tasks for .* is set to")
# Driver-side log records of Ray's that say nothing a user can act on for a local run.
NOISY_RECORDS = (
    re.compile(r"Token authentication is enabled for this Ray cluster"),
)

_records_filtered = False
_handler_wrapped = False
_stderr_filter: tuple | None = None  # (the original fd 2, the filter process)

# Warnings Ray logs with a whole traceback (exc_info) for a timeout that is not fatal: the
# traceback goes, and the warning becomes one line saying what happened and what to try.
# Ray Train's controller asks its autoscaling coordinator for the workers' resources with a
# 5 s timeout (autoscaling_coordinator_client.py); on a machine whose cores are all busy the
# answer comes late (GetTimeoutError), the controller retries and training goes on.
TRACEBACK_WARNINGS = tuple((re.compile(p), note) for p, note in (
    (r"Failed to (send|cancel) resource request for",
     "Ray Train's controller: its autoscaling coordinator did not answer within 5 s (the machine "
     "is busy); it retries and training goes on; if the run stalls, run it when the machine is "
     "less busy"),
))


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in NOISY_LINES)


def _shorten_traceback_warnings(lines: list[str]) -> list[str]:
    """TRACEBACK_WARNINGS' lines with their tracebacks replaced by their one-line notes."""
    out, state = [], None  # state: None, "expect" (the traceback may follow), "in" (inside it)
    for line in lines:
        if state == "expect" and not line.startswith("Traceback"):
            state = None
        if state is not None:
            if state == "expect" or not line.strip() or line[:1].isspace() or \
                    line.startswith(("Traceback", "During handling", "The above exception")):
                state = "in"
                continue
            state = None  # the exception's own line ends the traceback
            continue
        note = next((n for p, n in TRACEBACK_WARNINGS if p.search(line)), None)
        if note:
            out.append(note)
            state = "expect"
            continue
        out.append(line)
    return out


def filter_batch(batch: dict) -> dict | None:
    """A worker-log batch (Ray's dict: pid, actor_name, lines, ...) without Ray's noise, or None."""
    if (batch.get("actor_name") or "") in NOISY_ACTORS:
        return None
    lines = [line for line in _shorten_traceback_warnings(batch.get("lines", [])) if not is_noise(line)]
    if not lines:
        return None
    return dict(batch, lines=lines)


class _RecordFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in NOISY_RECORDS)


def quiet_ray_logs(verbose: bool = False) -> None:
    """Filter Ray's internal chatter from this driver's console (no-op with -v).

    Call it before `ray.init` (for Ray's own driver-side records, such as the token notice
    printed while a local Ray starts) and again after (the worker-log handler exists only
    then); each part is installed once.  Ray Data's periodic progress blocks are left to
    -v: our jobs print their own progress lines (done/total, rate, ETA), and in a terminal
    Ray Data still draws its bars.
    """
    global _records_filtered, _handler_wrapped
    if verbose:
        return
    if not _records_filtered:
        for pattern in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        # Ray's loggers print through the handlers of the "ray" logger (it does not propagate):
        # a filter on those handlers sees the records of every ray.* logger.
        for handler in logging.getLogger("ray").handlers:
            handler.addFilter(_RecordFilter())
        # Importing ray.data configures its loggers (level INFO): import it first, or a job
        # that imports it later prints Ray Data's plan and progress blocks after all.
        import ray.data  # noqa: F401

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        _records_filtered = True
    if not _handler_wrapped:
        _handler_wrapped = _wrap_worker_log_handler()
        if _handler_wrapped:
            _wrap_error_printer()


def _wrap_worker_log_handler() -> bool:
    try:  # a private hook of Ray's driver: if it moves, the console is only noisier
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    with dispatcher._lock:
        handlers = list(dispatcher.handlers)
        found = False
        for i, (name, handler) in enumerate(handlers):
            if name == "ray_print_logs":
                handlers[i] = (name, _filtered(handler))
                found = True
        dispatcher.handlers = handlers
    return found  # False before ray.init: try again after it


def _wrap_error_printer() -> None:
    """The raylet's notices (e.g. worker-process counts) reach the driver through another
    thread that calls `ray._private.worker.print_to_stdstream` by name: filter there too."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = worker.print_to_stdstream

    def print_to_stdstream(data, ignore_prefix: bool):
        kept = filter_batch(data)
        if kept is not None:
            original(kept, ignore_prefix)

    worker.print_to_stdstream = print_to_stdstream


def _filtered(handler):
    def handle(batch: dict) -> None:
        kept = filter_batch(batch)
        if kept is not None:
            handler(kept)
    return handle


def filter_native_stderr() -> None:
    """Send this process's file descriptor 2 through a small filter process that drops Ray's noise.

    Ray's C++ core worker in the driver writes some of its notices straight to fd 2, where no
    Python handler sees them: on every Ray Data actor pool, "Actor with class name ... has
    constructor arguments in the object store and max_restarts > 0" (Ray Data always passes
    its actors' arguments by reference, ray-project/ray#53727).  The CLI calls this once, before
    Ray starts, unless -v.  The filter is a separate process so that nothing is lost when the
    job crashes or is killed: it drains the pipe until every writer is gone.  fd 2 is no longer
    a terminal afterwards, so Ray Data logs progress instead of drawing bars (filtered; our own
    progress lines carry done/total and an ETA).
    """
    global _stderr_filter
    if _stderr_filter is not None:
        return
    read_end, write_end = os.pipe()
    original = os.dup(2)
    child = subprocess.Popen(
        # This file run as a script: stdlib only, so the filter starts even where the
        # project's package is not importable (a job's working directory elsewhere).
        [sys.executable, "-I", os.path.abspath(__file__)],
        stdin=read_end, stdout=original, stderr=original, close_fds=True)
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    _stderr_filter = (original, child)
    atexit.register(_restore_stderr)


def _restore_stderr() -> None:
    """At exit: give fd 2 back and let the filter print what is left before the shell prompt."""
    global _stderr_filter
    if _stderr_filter is None:
        return
    original, child = _stderr_filter
    _stderr_filter = None
    sys.stderr.flush()
    os.dup2(original, 2)  # closes this process's write end of the pipe
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:  # a leftover process still holds the pipe: don't hang
        pass


def filter_process() -> None:
    """The filter process's main: stdin to stdout until the job's last writer is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the job; its last words still print
    forward_filtered(sys.stdin.buffer, sys.stdout.buffer)


def forward_filtered(source, sink) -> None:
    """Copy lines from `source` to `sink` (binary streams), dropping Ray's noise, until EOF."""
    for raw in iter(source.readline, b""):
        if not is_noise(raw.decode("utf-8", "replace")):
            sink.write(raw)
            sink.flush()


# ---------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Progress lines as work completes: done/total, errors, rate and ETA, at most every
    `every_s` seconds and once at the end (readable in CI and `ray job submit` logs)."""

    def __init__(self, what: str, total: int | None, every_s: float = 10.0, unit: str = ""):
        self.what, self.total, self.every_s, self.unit = what, total, every_s, unit
        self.done = self.errors = 0
        self.start = self._last = time.perf_counter()

    def update(self, done: int = 1, errors: int = 0) -> None:
        self.done += done
        self.errors += errors
        now = time.perf_counter()
        finished = bool(self.total) and self.done >= self.total
        if now - self._last >= self.every_s or finished:
            self._last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total else ""
        text = f"{self.what}: {self.done}{of}{' ' + self.unit if self.unit else ''} done"
        if self.errors:
            text += f", {self.errors} errors"
        text += f", {rate:.2f}/s, elapsed {format_duration(elapsed)}"
        if self.total:
            left = max(self.total - self.done, 0)
            text += f", ETA {format_duration(left / rate) if rate > 0 else '?'}"
        return text

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


if __name__ == "__main__":  # the filter process of filter_native_stderr
    filter_process()
