"""Throughput of `cycledrums prepare`, in audio-seconds processed per wall second.

0. The two hot kernels against stock torchaudio on one stem, one thread: resampling
   (torchaudio.functional.resample vs pipelines.audio.resample, same filter) and the mel
   (torchaudio.transforms.MelSpectrogram vs pipelines.mel.mel_power, same numbers).
1. CPU part (decode + resample + mel + windows + Parquet) on a stems data set:
   - baseline: the same per-track work in this process, one thread, no Ray;
   - the Ray Data pipeline (`run_prepare`) on a fresh local Ray with N logical CPUs, the
     whole Ray instance (driver, raylet, workers) pinned to N cores with sched_setaffinity,
     so "per core" means per physical core, Ray's own processes included (workers warmed
     up first, so Ray's start and torch imports are not counted).
   Target: >= 250x real time per core.  Then the same on --growth times as many tracks:
   throughput and peak memory of both sizes side by side.
2. Separation with the given Demucs model (a tiny random one by default; `--demucs-model`
   for a real one): `separate()` in this process, and the whole mixes pipeline on Ray.

    .venv/bin/python benchmarks/bench_prepare.py [--tracks 24 --seconds 60 --repeats 3 --growth 4]

Prints medians and ratios vs the baseline measured in the same run.
"""
from __future__ import annotations

import os

# One OpenMP / BLAS thread, as Ray gives a 1-CPU task: idle OpenMP threads otherwise spin
# on the second core and the per-CPU-second figure counts their busy-waiting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import soundfile as sf

from memory import PeakMemory, print_growth


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="stems data set to use (default: a synth one in a temp folder)")
    p.add_argument("--tracks", type=int, default=24, help="synth tracks (default: 24)")
    p.add_argument("--seconds", type=float, default=60.0, help="synth track length in s (default: 60)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default: 3)")
    p.add_argument("--growth", type=int, default=4,
                   help="also run the CPU part on this many times the synth tracks; 1 = off (default 4)")
    p.add_argument("--cpus", default="1,2", help="Ray logical CPU counts to try (default: 1,2)")
    p.add_argument("--demucs-model", default=None,
                   help="Demucs model for the separation part (default: a tiny random model)")
    p.add_argument("--sep-tracks", type=int, default=2,
                   help="songs for the mixes pipeline run on Ray (default: 2; 0 skips it)")
    p.add_argument("--skip-separation", action="store_true", help="only the CPU part")
    return p.parse_args()


def track_seconds(root: Path) -> float:
    return sum(sf.info(p).duration for p in root.rglob("bass.wav"))


def baseline(root: Path, out: Path) -> dict[str, float]:
    """The CPU part for every track, in this process with one thread: per-step seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipelines.mel import MelParams
    from pipelines.prepare_stages import _decode_mono, window_file_name
    from pipelines.windows import track_windows

    torch.set_num_threads(1)
    params = MelParams()
    steps = {"decode+resample": 0.0, "mel+windows": 0.0, "parquet": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    cpu_start = time.process_time()
    for folder in sorted(p.parent for p in root.rglob("bass.wav")):
        t0 = time.perf_counter()
        bass, _ = _decode_mono(str(folder / "bass.wav"), params, None)
        drums, _ = _decode_mono(str(folder / "drums.wav"), params, None)
        t1 = time.perf_counter()
        table, _ = track_windows(folder.name, "train", bass, drums, params)
        t2 = time.perf_counter()
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        (out / window_file_name(folder.name)).write_bytes(sink.getvalue().to_pybytes())
        t3 = time.perf_counter()
        steps["decode+resample"] += t1 - t0
        steps["mel+windows"] += t2 - t1
        steps["parquet"] += t3 - t2
    steps["total"] = sum(steps.values())
    # CPU seconds of this process: the per-core figure even when other jobs share the cores.
    steps["cpu"] = time.process_time() - cpu_start
    return steps


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: kernels and filter banks are built on the first call
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernels(stem: Path, repeats: int) -> None:
    """Stock torchaudio vs the codec's fast paths on one stem (decoded once), one thread."""
    import torch
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    from pipelines.audio import read_audio, resample
    from pipelines.mel import MelParams, mel_power

    torch.set_num_threads(1)
    p = MelParams()
    data, rate = read_audio(stem)
    mono = torch.from_numpy(data.mean(axis=1))
    seconds = mono.shape[0] / rate
    stock_mel = T.MelSpectrogram(sample_rate=p.sample_rate, n_fft=p.n_fft, win_length=p.n_fft,
                                 hop_length=p.hop_length, n_mels=p.n_mels, power=2.0)
    at_codec_rate = resample(mono, rate, p.sample_rate)
    pairs = {
        f"resample {rate} -> {p.sample_rate} Hz": (lambda: AF.resample(mono, rate, p.sample_rate),
                                                   lambda: resample(mono, rate, p.sample_rate)),
        "mel power": (lambda: stock_mel(at_codec_rate), lambda: mel_power(at_codec_rate, p)),
    }
    for name, (stock, ours) in pairs.items():
        a, b = median_seconds(stock, repeats), median_seconds(ours, repeats)
        print(f"{name:32s} torchaudio {1000 * a:6.1f} ms, ours {1000 * b:6.1f} ms for {seconds:.0f} s "
              f"of audio -> {a / b:.1f}x faster")


def ray_runs(root: Path, tmp: Path, cpus: int, repeats: int, **config) -> list[float]:
    """Wall seconds of `run_prepare` on a fresh local Ray with `cpus` logical CPUs, pinned to
    `cpus` cores (where the machine has them): Ray's processes inherit the affinity."""
    import ray
    from ray.data import DataContext

    from pipelines.prepare import PrepareConfig, run_prepare

    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(all_cores)[:cpus])  # the driver (Ray Data's executor) too
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=1 << 30)
    DataContext.get_current().enable_progress_bars = False
    try:
        # Warm-up: start the workers and import torch in them.
        run_prepare(PrepareConfig(input=str(root), output=str(tmp / f"warm{cpus}"), limit=cpus, **config))
        walls = []
        for r in range(repeats):
            summary = run_prepare(PrepareConfig(input=str(root), output=str(tmp / f"out{cpus}_{r}"), **config))
            if summary["tracks_failed"]:
                raise RuntimeError(f"benchmark run had failures: {summary}")
            walls.append(summary["wall_seconds"])
        return walls
    finally:
        ray.shutdown()
        os.sched_setaffinity(0, all_cores)


def cpu_part(root: Path, tmp: Path, args) -> dict:
    """Baseline and Ray runs of the CPU part on `root`; prints them and returns the rates
    (audio seconds per wall second) and the peak memory of the largest --cpus setting."""
    audio = track_seconds(root)
    baseline(root, tmp / "base_warm")  # first calls build the resampling / mel kernels
    runs = [baseline(root, tmp / f"base{r}") for r in range(args.repeats)]
    base = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base_rate = audio / base["total"]
    print(f"baseline, 1 process 1 thread, no Ray: {base['total']:.2f} s -> {base_rate:.0f}x real time; "
          f"{base['cpu']:.2f} CPU s -> {audio / base['cpu']:.0f}x real time per CPU second")
    for step in ("decode+resample", "mel+windows", "parquet"):
        print(f"    {step:16s} {base[step]:.2f} s ({100 * base[step] / base['total']:.0f}%, "
              f"{audio / base[step]:.0f}x real time)")
    result = {"base_rate": base_rate}
    for cpus in [int(c) for c in args.cpus.split(",")]:
        with PeakMemory() as peak:
            walls = ray_runs(root, tmp, cpus, args.repeats)
        wall = statistics.median(walls)
        rate = audio / wall
        cores = min(cpus, len(os.sched_getaffinity(0)))
        print(f"Ray Data, {cpus} logical CPU(s) on {cores} core(s): median {wall:.2f} s of "
              f"{[round(w, 2) for w in walls]} -> "
              f"{rate:.0f}x real time, {rate / cpus:.0f}x per CPU "
              f"(ratio vs baseline {rate / base_rate:.2f}; target >= 250x per core)")
        print(f"    {peak.describe()}")
        result.update(job_rate=rate, peak=peak)
    return result


def separation_direct(model_spec: str, mix_path: Path, repeats: int) -> dict[str, float]:
    """Seconds of `separate()` on one mix, median over repeats, with 1 thread and all threads."""
    import torch

    from pipelines.audio import read_audio
    from pipelines.separation import load_model, separate

    model = load_model(model_spec)
    samples, rate = read_audio(mix_path)
    wav = torch.from_numpy(samples.T.copy())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    results = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        separate(model, wav, rate, 22050, device)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            separate(model, wav, rate, 22050, device)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[f"{device}, {threads} thread(s)"] = statistics.median(times)
    return results


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        from pipelines.synth import write_dataset

        if args.input:
            root = Path(args.input)
        else:
            root = tmp / "synth"
            write_dataset(root, tracks=args.tracks, seconds=args.seconds, seed=0)
        audio = track_seconds(root)
        print(f"data: {root} ({audio:.0f} s of audio in {len(list(root.rglob('bass.wav')))} tracks); "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other jobs slow every figure)")

        print("\n== kernels, one stem, one thread (median of 5) ==")
        kernels(sorted(root.rglob("bass.wav"))[0], 5)

        print("\n== CPU part: decode + resample + mel + windows + Parquet ==")
        small = cpu_part(root, tmp / "x1", args)
        if args.growth > 1 and not args.input:
            big_root = tmp / "synth_growth"
            write_dataset(big_root, tracks=args.tracks * args.growth, seconds=args.seconds, seed=0)
            print(f"\n== the same at x{args.growth}: {track_seconds(big_root):.0f} s of audio in "
                  f"{args.tracks * args.growth} tracks ==")
            print_growth(small, cpu_part(big_root, tmp / f"x{args.growth}", args), args.growth)

        if args.skip_separation:
            return
        print("\n== separation ==")
        spec = args.demucs_model
        if spec is None:
            from pipelines.separation import save_local_model, tiny_model

            spec = str(tmp / "tiny_model")
            save_local_model(tiny_model(), spec, "tiny")
            print("model: tiny random Demucs (v2 architecture, channels 4, depth 4)")
        else:
            print(f"model: {spec}")
        mixes = sorted(root.rglob("mixture.wav"))
        if not mixes:
            print("no mixture.wav in the data set: skipping separation")
            return
        mix_seconds = sf.info(mixes[0]).duration
        for label, seconds in separation_direct(spec, mixes[0], args.repeats).items():
            print(f"separate() in process, {label}: {seconds:.2f} s for {mix_seconds:.0f} s -> "
                  f"{mix_seconds / seconds:.1f}x real time")
        if args.sep_tracks > 0:
            songs = tmp / "mixes"
            for i, path in enumerate(mixes[: args.sep_tracks]):
                (songs / f"{i:03d}").mkdir(parents=True)
                shutil.copy(path, songs / f"{i:03d}" / "song.wav")
            seconds = sum(sf.info(p).duration for p in songs.rglob("*.wav"))
            walls = ray_runs(songs, tmp / "sep", 2, 1, demucs_model=spec, min_level_db=-100.0)
            print(f"mixes pipeline on Ray (2 logical CPUs, 1 Demucs actor): {walls[0]:.2f} s for "
                  f"{seconds:.0f} s -> {seconds / walls[0]:.1f}x real time")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
