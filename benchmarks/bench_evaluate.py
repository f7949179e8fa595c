"""`cycledrums evaluate` against `cycledrums generate` then `cycledrums score` on the same clips.

Both are run in this process on one local Ray (started once; a warm-up round of each
first): `run_generate` + `run_score` back to back, and `run_evaluate`, alternating.
The test set is --clips clips of procedural songs in the musdb layout
(<clip>/bass.wav + drums.wav, 44.1 kHz stereo), the model the demo's small CycleGAN
(untrained: the cost does not depend on the weights), Inception-v3 randomly
initialised.  Prints, per way, the median wall time of --repeats runs, their ratio,
and the bytes each left in its OUTPUT folder(s).

    .venv/bin/python benchmarks/bench_evaluate.py [--clips 24 --report-clips 6 --repeats 3]

Measured 2026-11-30 on the 2-core development machine under heavy load from other jobs
(load average 20-40; my own tests ran beside the first runs), --clips 12 --seconds 6
--report-clips 3 --iters 16 --repeats 3: generate + score median 99.5 s (86-137 s),
evaluate median 105.3 s (78-119 s): 0.94x, i.e. no measurable gain at this noise and
size; evaluate wrote 9.1 MB, generate + score 23.9 MB (38%; most of evaluate's bytes are
the report's media, which score writes too).  Re-measured after the CPU plans changed
(one actor per core in generate and score), right after the test suite on a quieter
machine, same settings: generate + score 66.6 s (45.9-69.7), evaluate 57.5 s (55.9-63.3):
1.16x, 38% of the bytes.  Not yet the issue's 1.2x target.

Re-measured with evaluate's CPU pools on the shared-core plan (one generator and one
features + Inception actor per core), quiet machine (load ~2-3), same settings:
generate + score 58.9 s (54.1-64.6), evaluate 56.8 s (50.7-69.5): 1.04x, 38% of the
bytes.  Where the time goes (Ray Data's per-dataset times): generate 16-23 s, score
28-31 s, evaluate's pass 36-51 s plus 6 s for the report clips' audio (a second
generator pool, started cold).  Scoring is Inception-bound (about 2.4 s of one core per
reference clip: 7 sets x 2 windows through Inception-v3), identical in both ways; what
evaluate saves (one actor cold start, the WAV write and re-read) the report-audio pass
spends again at this size.  After capping the light I/O tasks at two (which made
generate 9-10 s and score 27-31 s here), same settings: generate + score 51.3 s
(46.3-51.6), evaluate 58.2 s (55.1-61.0): 0.88x; evaluate's pass 37-42 s is no shorter
than the two jobs' passes added up.
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
                          inception_weights=weights, report_clips=args.report_clips))
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
