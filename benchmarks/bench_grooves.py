"""Rendering speed of `cycledrums grooves`, in real-time factor per core.

Real-time factor = seconds of audio written (one performance: its drums, bass and
mixture stems) per second of compute.  Target: >= 100x per core.

1. reference: the whole performance MIDI rendered by midirenderer in one call (drums
   only, no bass, nothing written): what rendering costs without the sound bank.
2. in-process: `run_grooves(in_process=True)` (read, compose, render, write WAVs), one
   thread.  "cold" = the first run in a fresh process with an empty one-shot cache (every
   one-shot rendered by midirenderer); "warm" = the median of the following runs.
   Per core = audio / this process's CPU seconds (other jobs on the machine do not count).
3. Ray: the Ray Data job on a fresh local Ray with N logical CPUs, the whole Ray pinned to
   N cores (sched_setaffinity).  The one-shot disk cache is the one step 2 filled (as on a
   machine that has rendered before); one warm-up run, then the median of the timed runs;
   per core = audio / (wall x N), and audio / the tasks' own CPU seconds.

    .venv/bin/python benchmarks/bench_grooves.py [GROOVE_DIR] [--max-tracks 20 --repeats 3 --cpus 2]

GROOVE_DIR: a Groove MIDI folder with info.csv (default: tests/data/groove, five short takes).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as a 1-CPU Ray task runs
import tempfile  # noqa: E402

# An empty one-shot cache of this run's own (set before Ray starts: its workers inherit it).
os.environ["CYCLEDRUMS_SOUNDBANK_CACHE"] = tempfile.mkdtemp(prefix="bench_grooves_bank_")

import argparse
import io
import logging
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groove_dir", nargs="?", default=str(ROOT / "tests" / "data" / "groove"))
    p.add_argument("--max-tracks", type=int, default=None, help="seeded sample of this many takes (default: all)")
    p.add_argument("--styles", default=None, help="comma-separated styles (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default: 3)")
    p.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1),
                   help="Ray logical CPUs = cores pinned (default: 2)")
    p.add_argument("--skip-ray", action="store_true")
    return p.parse_args()


def config(args, out: Path):
    from pipelines.grooves import GroovesConfig

    styles = args.styles.split(",") if args.styles else None
    return GroovesConfig(groove_dir=args.groove_dir, out=str(out), max_tracks=args.max_tracks, styles=styles)


def reference(args, tmp: Path) -> tuple[float, float]:
    """(audio seconds, CPU seconds) of one-call midirenderer renders of every selected take."""
    import midirenderer
    import soundfile as sf

    from pipelines.grooves import read_info, select
    from pipelines.soundbank import default_soundfont_path

    with open(default_soundfont_path(), "rb") as f:
        soundfont = f.read()
    jobs = select(read_info(args.groove_dir), config(args, tmp))
    audio = cpu = 0.0
    for job in jobs:
        data = (Path(args.groove_dir) / job["midi"]).read_bytes()
        c0 = time.process_time()
        wav = midirenderer.render_wave_from(soundfont, data)
        cpu += time.process_time() - c0
        audio += sf.info(io.BytesIO(wav)).duration
    return audio, cpu


def in_process(args, tmp: Path) -> list[dict]:
    from pipelines.grooves import run_grooves

    runs = []
    for r in range(args.repeats + 1):  # run 0 is cold
        out = tmp / f"inproc{r}"
        c0 = time.process_time()
        summary = run_grooves(config(args, out), in_process=True)
        summary["cpu_seconds"] = time.process_time() - c0
        runs.append(summary)
        shutil.rmtree(out)
    return runs


def on_ray(args, tmp: Path) -> list[dict]:
    import ray
    from ray.data import DataContext

    from pipelines.grooves import run_grooves

    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(cores)[: args.cpus])
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, object_store_memory=1 << 30)
    DataContext.get_current().enable_progress_bars = False
    try:
        runs = []
        for r in range(args.repeats + 1):  # run 0 warms the workers (imports, sound banks)
            out = tmp / f"ray{r}"
            runs.append(run_grooves(config(args, out)))
            shutil.rmtree(out)
        return runs
    finally:
        ray.shutdown()
        os.sched_setaffinity(0, cores)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_grooves_"))
    try:
        print(f"data: {args.groove_dir}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
              "(other jobs on the machine slow every wall-clock figure)")
        audio, cpu = reference(args, tmp)
        print(f"reference, one midirenderer call per take (drums only): {audio:.0f} s of audio, "
              f"{audio / cpu:.0f}x real time per core (CPU time)")
        runs = in_process(args, tmp)
        audio = runs[0]["audio_seconds"]
        cold, warm = runs[0], runs[1:]
        per_core = [r["audio_seconds"] / r["cpu_seconds"] for r in warm]
        print(f"in-process, {runs[0]['tracks_ok']} takes, {audio:.0f} s of audio (drums + bass + mixture "
              f"written): cold {audio / cold['cpu_seconds']:.0f}x per core; warm median "
              f"{statistics.median(per_core):.0f}x per core (CPU time; runs {', '.join(f'{x:.0f}' for x in per_core)}), "
              f"{statistics.median(audio / r['wall_seconds'] for r in warm):.0f}x wall")
        if not args.skip_ray:
            runs = on_ray(args, tmp)
            timed = runs[1:]
            wall = statistics.median(r["wall_seconds"] for r in timed)
            task_cpu = statistics.median(r["task_cpu_seconds"] for r in timed)
            print(f"Ray Data job, {args.cpus} CPUs pinned to {args.cpus} cores: warm-up run "
                  f"{runs[0]['wall_seconds']:.1f} s; median of {len(timed)}: {wall:.2f} s wall = "
                  f"{audio / wall:.0f}x real time, {audio / wall / args.cpus:.0f}x per core (wall); "
                  f"{audio / task_cpu:.0f}x per CPU-second inside the tasks")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(os.environ["CYCLEDRUMS_SOUNDBANK_CACHE"], ignore_errors=True)


if __name__ == "__main__":
    main()
