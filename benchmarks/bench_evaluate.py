"""`cycledrums evaluate` against `cycledrums generate` then `cycledrums score` on the same clips.

Both are run in this process on one local Ray (started once; a warm-up round of each
first): `run_generate` + `run_score` back to back, and `run_evaluate`, alternating.
The test set is --clips clips of procedural songs in the musdb layout
(<clip>/bass.wav + drums.wav, 44.1 kHz stereo), the model the demo's small CycleGAN
(untrained: the cost does not depend on the weights), Inception-v3 randomly
initialised.  Prints, per way, the median wall time of --repeats runs, their ratio,
and the bytes each left in its OUTPUT folder(s).

    .venv/bin/python benchmarks/bench_evaluate.py [--clips 24 --report-clips 6 --repeats 3]

--commands runs each job as its own `cycledrums` process (each starts its own local Ray),
as a user runs them one after the other; by default all three run in this process on one
Ray started once, which spares generate + score a process start, a Ray start and fresh
worker processes each.

Measured 2026-11-30 on the 2-core development machine, --clips 12 --seconds 6
--report-clips 3 --iters 16 --repeats 3, medians (the host's speed drifted by 30-40%
within the hour, so only figures of one run compare):

  evaluate with two pools (a generator and a features + Inception actor per core) and a
  second generator pool for the report clips' audio, in one process: generate + score
  33.3 s, evaluate 40.8 s (0.82x).  Timestamps in the actors showed why: Ray started the
  four processes together (about 10 s, each importing torch), and the scoring actors
  were ready only after the generator pool's work was done; the report-audio pass added
  6.6 s.
  One EvaluateActor per core (generator + Inception) and the report audio in the driver:
    in one process:   33.8 s vs 29.0 s (1.17x); later, on the slower host, 43.3 s vs 37.9 s (1.14x)
    as commands:      66.2 s vs 52.2 s (1.27x); later, on the slower host, 84.3 s vs 60.6 s (1.39x)
  evaluate wrote 9.1 MB against 24.0 MB (38%) in every run; most of it is the report's
  media, which score writes too.  Scoring (Inception on 6 images per clip) and the
  report's figures (about 0.45 s per set row) are most of both ways.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pipelines.mel import MelParams


def write_test_set(root: Path, n: int, seconds: float) -> Path:
    from pipelines.synth import plan_dataset, render_song

    rate, i = 44100, 0
    for plan in plan_dataset(max(1, (n + 3) // 4), seed=5):
        stems = render_song(plan, seconds * 4 + 1, rate=rate)
        for k in range(4):
            if i == n:
                return root
            cut = slice(int(k * seconds * rate), int((k + 1) * seconds * rate))
            (root / f"c{i:04d}").mkdir(parents=True)
            for stem in ("bass", "drums"):
                mono = 0.8 * stems[stem][cut] / max(1e-9, np.abs(stems[stem]).max())
                sf.write(root / f"c{i:04d}" / f"{stem}.wav", np.stack([mono, mono], 1), rate, subtype="PCM_16")
            i += 1
    return root


def write_checkpoint(folder: Path) -> str:
    from train.checkpoint import write_checkpoint as write
    from train.config import TrainConfig
    from train.models import build_networks

    config = TrainConfig(model="cyclegan", ngf=16, ndf=16, n_blocks=4).to_dict()  # the demo's model
    config["mel_params"] = MelParams().to_dict()
    torch.manual_seed(0)
    nets = build_networks(config)
    write(str(folder), {k: v.state_dict() for k, v in nets.items()}, {"step": 0}, config, step=0, epoch=0)
    return str(folder)


def bytes_under(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def two_jobs(checkpoint: str, test_set: Path, out: Path, weights: str, args) -> tuple[float, int]:
    from infer.generate import GenerateConfig, run_generate
    from infer.score import ScoreConfig, run_score

    start = time.perf_counter()
    run_generate(GenerateConfig(checkpoint=checkpoint, inputs=[str(test_set)], output=str(out / "generated"),
                                griffin_lim_iters=args.iters))
    run_score(ScoreConfig(generated=[str(out / "generated")], reference=str(test_set), output=str(out / "scores"),
                          inception_weights=weights, report_clips=args.report_clips, griffin_lim_iters=args.iters))
    return time.perf_counter() - start, bytes_under(out)


def one_job(checkpoint: str, test_set: Path, out: Path, weights: str, args) -> tuple[float, int]:
    from infer.evaluate import EvaluateConfig, run_evaluate

    start = time.perf_counter()
    run_evaluate(EvaluateConfig(checkpoint=checkpoint, test_set=str(test_set), output=str(out),
                                griffin_lim_iters=args.iters, inception_weights=weights,
                                report_clips=args.report_clips))
    return time.perf_counter() - start, bytes_under(out)


def _cli(*argv: str) -> None:
    """One `cycledrums` command in its own process, as a user runs it (it starts its own local Ray)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cycledrums_cli", *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f"cycledrums {argv[0]} exited {done.returncode}: {done.stderr[-3000:]}")


def two_commands(checkpoint: str, test_set: Path, out: Path, weights: str, args) -> tuple[float, int]:
    start = time.perf_counter()
    _cli("generate", checkpoint, str(test_set), str(out / "generated"), "--griffin-lim-iters", str(args.iters))
    _cli("score", str(out / "generated"), str(test_set), str(out / "scores"), "--inception-weights", weights,
         "--report-clips", str(args.report_clips))
    return time.perf_counter() - start, bytes_under(out)


def one_command(checkpoint: str, test_set: Path, out: Path, weights: str, args) -> tuple[float, int]:
    start = time.perf_counter()
    _cli("evaluate", checkpoint, str(test_set), str(out), "--griffin-lim-iters", str(args.iters),
         "--inception-weights", weights, "--report-clips", str(args.report_clips))
    return time.perf_counter() - start, bytes_under(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24, help="test clips (default 24)")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    ap.add_argument("--report-clips", type=int, default=6, help="--report-clips of both ways (default 6)")
    ap.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each way, medians (default 3)")
    ap.add_argument("--commands", action="store_true",
                    help="run each job as its own `cycledrums` process with its own local Ray, as a user "
                         "runs them one after the other (default: all jobs in this process on one Ray)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from cluster.ray_runtime import init_ray
    from infer.inception import save_random_weights

    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    test_set = write_test_set(tmp / "test", args.clips, args.seconds)
    checkpoint = write_checkpoint(tmp / "checkpoint")
    weights = save_random_weights(str(tmp / "inception.pth"), seed=0)
    print(f"{args.clips} clips of {args.seconds:g} s (musdb layout, 44.1 kHz stereo), demo-size CycleGAN, "
          f"{args.iters} Griffin-Lim iterations, --report-clips {args.report_clips}; {os.cpu_count()} cores")
    if args.commands:
        ways = {"generate + score": two_commands, "evaluate": one_command}
    else:
        init_ray()
        ways = {"generate + score": two_jobs, "evaluate": one_job}
    for name, run in ways.items():  # warm-up: worker processes, imports, caches
        run(checkpoint, test_set, tmp / f"warmup-{name[:4]}", weights, args)
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in ways}
    for r in range(args.repeats):
        for name, run in (ways.items() if r % 2 == 0 else reversed(ways.items())):
            out = tmp / f"run{r}-{name[:4]}"
            results[name].append(run(checkpoint, test_set, out, weights, args))
            shutil.rmtree(out)
            print(f"  run {r}: {name}: {results[name][-1][0]:.1f} s, {results[name][-1][1] / 1e6:.2f} MB written")
    medians = {name: statistics.median(s for s, _ in runs) for name, runs in results.items()}
    written = {name: runs[-1][1] for name, runs in results.items()}
    for name in ways:
        print(f"{name}: median {medians[name]:.1f} s over {args.repeats} runs, {written[name] / 1e6:.2f} MB written")
    print(f"evaluate is {medians['generate + score'] / medians['evaluate']:.2f}x as fast and writes "
          f"{written['evaluate'] / max(1, written['generate + score']):.1%} of the bytes")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
