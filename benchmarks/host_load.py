"""What the rest of the machine does while a benchmark's own work runs: the CPU time and the
wake-ups per second of every other process (Ray's own among them), read from /proc (Linux).

Why it is measured: a compute-bound step that keeps every core busy loses time to whatever
else runs, and more than that process's CPU share: each wake-up preempts one of the step's
threads, and two OpenMP threads in lock-step both wait while either is off its core.  On a
2-core machine Ray's own processes are that "else" (docs/design.md, "What Ray Train costs on
a small machine").

A sampler thread keeps a snapshot every `interval` seconds; `window(t0, t1)` compares the
snapshots nearest to two wall-clock times, so a benchmark can look at its timed steps only
and leave Ray's start-up out.  The sampler's own reading of /proc runs in the benchmark's
process, so its cost is counted there, under the driver's name.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from collections import defaultdict

TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_name(pid: str) -> str:
    """`ray::<actor or task>` for Ray's Python workers, else the program (and script) name."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    if not args:
        raise OSError("kernel thread")
    if args[0].startswith("ray::"):
        return args[0].split()[0]
    program = os.path.basename(args[0])
    scripts = [os.path.basename(a) for a in args[1:3] if a.endswith(".py")]
    return " ".join([program, *scripts[:1]])


def _snapshot() -> dict[str, tuple[str, int, int]]:
    """pid -> (name, CPU ticks, voluntary context switches summed over its threads)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            name = _process_name(pid)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])  # utime + stime, all threads
            wakeups = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            wakeups += int(line.split()[1])
            out[pid] = (name, ticks, wakeups)
        except (OSError, IndexError, ValueError):  # gone meanwhile, or a kernel thread
            continue
    return out


class HostLoad:
    """`with HostLoad() as load: ...`, then `load.window(t0, t1, exclude=...)`."""

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self._times: list[float] = []
        self._snaps: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HostLoad":
        if os.path.isdir("/proc/self/task"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            now, snap = time.time(), _snapshot()
            self._times.append(now)
            self._snaps.append(snap)
            if self._stop.wait(self.interval):
                return

    def window(self, t0: float, t1: float, exclude: tuple[str, ...] = ()) -> dict | None:
        """CPU (cores) and wake-ups/s of every process not named in `exclude`, between the
        first snapshot at or after t0 and the last at or before t1; None if too short."""
        i = bisect.bisect_left(self._times, t0)
        j = bisect.bisect_right(self._times, t1) - 1
        if j <= i:
            return None
        seconds = self._times[j] - self._times[i]
        first, last = self._snaps[i], self._snaps[j]
        by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        for pid, (name, ticks, wakeups) in last.items():
            if name in exclude:
                continue
            _, ticks0, wakeups0 = first.get(pid, (name, 0, 0))  # started inside: counted from 0
            entry = by_name[name]
            entry[0] += (ticks - ticks0) / TICKS_PER_S / seconds
            entry[1] += (wakeups - wakeups0) / seconds
            entry[2] += 1
        return {"seconds": seconds,
                "cores": sum(e[0] for e in by_name.values()),
                "wakeups_per_s": sum(e[1] for e in by_name.values()),
                "processes": sum(e[2] for e in by_name.values()),
                "by_name": {k: tuple(v) for k, v in by_name.items()}}


def describe(load: dict | None, top: int = 6) -> str:
    if load is None:
        return "other processes: not sampled (no /proc, or the window was too short)"
    busiest = sorted(load["by_name"].items(), key=lambda kv: -kv[1][0])[:top]
    parts = ", ".join(f"{name}{f' x{n}' if n > 1 else ''} {cores:.3f}" for name, (cores, _, n) in busiest)
    return (f"other processes over {load['seconds']:.0f} s: {load['cores']:.2f} cores, "
            f"{load['wakeups_per_s']:.0f} wake-ups/s, {load['processes']} processes "
            f"(busiest, cores: {parts})")
