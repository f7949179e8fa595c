"""Peak memory of a benchmark's driver and of the Ray worker processes, sampled while it runs,
and the line the benchmarks print when the work grows.

Ray names its worker processes `ray::<task or actor>` (ray::IDLE when idle), so a
sampler thread in the driver can find them with psutil.  Peak RSS is sampled every
`interval` s: short spikes between samples are missed, which is fine for the question
asked here (does memory grow with the work?).
"""
from __future__ import annotations

import os
import threading

import psutil


def _is_ray_worker(proc: psutil.Process) -> bool:
    try:
        name = proc.name()
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return name.startswith("ray::") or bool(cmd and cmd[0].startswith("ray::"))


class PeakMemory:
    """`with PeakMemory() as peak: ...` then peak.driver_mb, peak.driver_added_mb (the driver's
    peak over its RSS on entry: what the job itself added, apart from what the benchmark's own
    in-process loop left behind), peak.worker_mb (largest one worker reached),
    peak.workers_total_mb (largest sum over all workers at one time)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.driver_mb = self.driver_added_mb = self.worker_mb = self.workers_total_mb = 0.0
        self._driver_start_mb = psutil.Process(os.getpid()).memory_info().rss / (1024 * 1024)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while True:
            self._sample(me)
            if self._stop.wait(self.interval):
                return

    def _sample(self, me: psutil.Process) -> None:
        mb = 1024 * 1024
        self.driver_mb = max(self.driver_mb, me.memory_info().rss / mb)
        self.driver_added_mb = self.driver_mb - self._driver_start_mb
        total = 0.0
        for proc in psutil.process_iter():
            if not _is_ray_worker(proc):
                continue
            try:
                rss = proc.memory_info().rss / mb
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            self.worker_mb = max(self.worker_mb, rss)
        self.workers_total_mb = max(self.workers_total_mb, total)

    def describe(self) -> str:
        return (f"peak RSS: driver {self.driver_mb:.0f} MB (+{self.driver_added_mb:.0f} MB during the job), "
                f"largest Ray worker {self.worker_mb:.0f} MB, "
                f"all Ray workers {self.workers_total_mb:.0f} MB")


def print_growth(small: dict, big: dict, factor: int) -> None:
    """Throughput and peak memory of the 1x and the `factor`x runs (dicts with job_rate,
    base_rate and peak)."""
    print(f"\ngrowth x{factor}: Ray job throughput {big['job_rate'] / small['job_rate']:.2f}x the 1x run's "
          f"(loop {big['base_rate'] / small['base_rate']:.2f}x); peak worker RSS "
          f"{small['peak'].worker_mb:.0f} -> {big['peak'].worker_mb:.0f} MB, driver "
          f"{small['peak'].driver_mb:.0f} -> {big['peak'].driver_mb:.0f} MB (added during the job "
          f"{small['peak'].driver_added_mb:.0f} -> {big['peak'].driver_added_mb:.0f} MB)")
    if "clips" in small and big["job_s"] > small["job_s"]:
        # Two points of job seconds = start + clips / rate: the rate once the actors are up,
        # and the start (process starts, imports, model loads) that a small run pays in full.
        rate = (big["clips"] - small["clips"]) / (big["job_s"] - small["job_s"])
        start = small["job_s"] - small["clips"] / rate
        print(f"  job seconds = {start:.1f} s of start + clips / {rate:.2f} clips/s: past the start the "
              f"Ray job runs {rate / small['base_rate']:.2f}x the loop (1x loop rate)")
