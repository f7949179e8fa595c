"""`cycledrums demo`: synth -> prepare -> train -> evaluate on one Ray, then a summary.

evaluate is generate + score in one job: the listening report, the scores and the
generated audio (OUTPUT/audio/cyclegan/<song>/drums.wav, mix.wav: the demo's test
songs are fewer than the report's clips per set, so every one gets audio).

Every step is the real subcommand, called in-process through `cycledrums_cli.main(argv)`
with the arguments a user would type, so the demo depends only on the command-line
contracts of the jobs.  Ray is initialised once here; each job's own `init_ray` then
finds it running and reuses it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cluster.errors import UserError
from cluster.job_options import add_job_parser, add_json_option
from pipelines.codec_options import GRIFFIN_LIM_ITERS

# Sub-folders (and files) of OUT that the demo writes; --force removes only these.
# ("generated": written by earlier versions, which ran generate then score; evaluate puts the audio
# under scores/audio.)
OUTPUTS = ("data", "windows", "run", "generated", "scores", "inception_random.pth", "demo_summary.json")
CALIBRATION_STEPS = 10  # first, timed training chunk when the run length is a time budget


class DemoError(UserError):
    """A step failed, or OUT is not usable; the message names the step."""


@dataclass
class DemoOptions:
    out: Path
    tracks: int = 12
    seconds: float = 30.0
    train_minutes: float | None = 5.0
    max_steps: int | None = None
    num_workers: int = 2
    seed: int = 0
    address: str | None = None
    force: bool = False
    quick: bool = False
    data: str = "synth"  # or "grooves": Groove MIDI takes from groove_dir (cycledrums grooves)
    groove_dir: str | None = None
    # model width and depth: small enough to learn something in minutes on two cores
    ngf: int = 16
    ndf: int = 16
    n_blocks: int = 4
    griffin_lim_iters: int = GRIFFIN_LIM_ITERS

    @classmethod
    def from_args(cls, args) -> "DemoOptions":
        opts = cls(out=Path(args.out), seed=args.seed, address=args.address, force=args.force,
                   quick=args.quick, data=getattr(args, "data", "synth"),
                   groove_dir=getattr(args, "groove_dir", None))
        if args.quick:  # tiny everything: the code paths run, nothing is learnt
            opts.tracks, opts.seconds, opts.train_minutes, opts.max_steps = 6, 10.0, None, 4
            opts.num_workers, opts.ngf, opts.ndf, opts.n_blocks = 1, 8, 8, 2
            opts.griffin_lim_iters = 8
        if args.tracks is not None:
            opts.tracks = args.tracks
        if args.seconds is not None:
            opts.seconds = args.seconds
        if args.max_steps is not None:
            opts.max_steps, opts.train_minutes = args.max_steps, None
        if args.train_minutes is not None:
            opts.train_minutes, opts.max_steps = args.train_minutes, None
        if args.num_workers is not None:
            opts.num_workers = args.num_workers
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.tracks < 2:
            raise DemoError("--tracks must be at least 2 (one train and one test song)")
        if self.seconds < 8:
            raise DemoError("--seconds must be at least 8 (a 256-frame window is 5.9 s)")
        if self.max_steps is not None and self.max_steps < 1:
            raise DemoError("--max-steps must be at least 1")
        if self.train_minutes is not None and self.train_minutes <= 0:
            raise DemoError("--train-minutes must be positive")
        if self.num_workers < 1:
            raise DemoError("--num-workers must be at least 1")
        if self.data == "grooves" and not self.groove_dir:
            raise DemoError("--data grooves needs --groove-dir (a Groove MIDI folder with info.csv)")


@dataclass
class StepLog:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, argv: list[str]) -> float:
        """Run `cycledrums ARGV` in this process; raise DemoError naming the step if it fails."""
        import cycledrums_cli

        command = "cycledrums " + shlex.join(argv)
        _say(f"step {name}: {command}")
        start = time.perf_counter()
        try:
            status = cycledrums_cli.main(argv)
        except SystemExit as exc:  # argparse refused the arguments: a CLI contract changed
            status = exc.code if isinstance(exc.code, int) else 2
        except Exception as exc:
            raise DemoError(f"step '{name}' failed: {type(exc).__name__}: {exc}\n"
                            f"  command: {command}") from exc
        elapsed = time.perf_counter() - start
        if status:
            raise DemoError(f"step '{name}' failed with exit status {status} (its error is printed "
                            f"above)\n  command: {command}")
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        _say(f"step {name} done in {_duration(elapsed)}")
        return elapsed


def run_demo(opts: DemoOptions) -> dict:
    """Run the four steps into opts.out; return the summary (also OUTPUT/demo_summary.json)."""
    from cluster.ray_runtime import init_ray

    out = _prepare_out(opts)
    paths = {name: out / name for name in ("data", "windows", "run", "scores")}
    paths["generated"] = paths["scores"] / "audio" / "cyclegan"  # evaluate's audio of the cyclegan set
    started = time.perf_counter()
    steps = StepLog()
    init_ray(opts.address)

    if opts.data == "grooves":  # the first --seconds of --tracks takes, train/test kept
        steps.run("grooves", ["grooves", opts.groove_dir, str(paths["data"]), "--max-tracks",
                              str(opts.tracks), "--max-seconds", f"{opts.seconds:g}", "--seed", str(opts.seed)])
    else:
        steps.run("synth", ["synth", str(paths["data"]), "--tracks", str(opts.tracks),
                            "--seconds", f"{opts.seconds:g}", "--seed", str(opts.seed)])
    steps.run("prepare", ["prepare", str(paths["data"]), str(paths["windows"])])
    train_steps = _train(steps, opts, paths["windows"], paths["run"])
    test_songs = paths["data"] / "test"  # musdb layout: <song>/bass.* in, <song>/drums.* the truth
    weights, weights_note = _inception_weights(out)
    evaluate_argv = ["evaluate", f"cyclegan={paths['run']}", str(test_songs), str(paths["scores"]),
                     "--griffin-lim-iters", str(opts.griffin_lim_iters)]
    if weights:
        evaluate_argv += ["--inception-weights", str(weights)]
    steps.run("evaluate", evaluate_argv)

    summary = {
        "out": str(out),
        "wall_seconds": time.perf_counter() - started,
        "step_seconds": steps.seconds,
        "train_steps": train_steps,
        "inception_weights": weights_note,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "results": collect_results(paths),
        "scores": _score_headline(paths["scores"]),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _prepare_out(opts: DemoOptions) -> Path:
    out = opts.out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise DemoError(f"OUT {out} is an existing file; give a folder")
    earlier = [name for name in OUTPUTS if (out / name).exists()]
    if earlier and not opts.force:
        raise DemoError(f"{out} already holds demo outputs ({', '.join(earlier)}); pass --force to "
                        f"replace them, or choose another OUT")
    for name in earlier:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DemoError(f"cannot create OUT {out}: {err.strerror or err}") from err
    return out


def _train(steps: StepLog, opts: DemoOptions, windows: Path, run: Path) -> int:
    """Train to opts.max_steps, or fit the step count to the time budget: a short first
    chunk measures the step time, then the run is resumed with the steps that fit."""
    base = ["train", str(windows), str(run), "--num-workers", str(opts.num_workers)]
    model = ["--model", "cyclegan", "--ngf", str(opts.ngf), "--ndf", str(opts.ndf),
             "--n-blocks", str(opts.n_blocks), "--log-every", "5"]
    if opts.max_steps is not None:
        n = opts.max_steps
        steps.run("train", base + model + ["--max-steps", str(n), "--checkpoint-every", str(n)])
        return n
    budget = opts.train_minutes * 60.0
    first = steps.run("train", base + model + ["--max-steps", str(CALIBRATION_STEPS),
                                               "--checkpoint-every", str(CALIBRATION_STEPS)])
    per_step, overhead = measure_step_seconds(run, CALIBRATION_STEPS, first)
    extra = int((budget - first - overhead) / per_step) if per_step > 0 else 0
    _say(f"train: {per_step:.2f} s/step, {overhead:.0f} s start-up; "
         f"{extra} more step(s) fit the {opts.train_minutes:g} min budget")
    if extra < 1:
        return CALIBRATION_STEPS
    total = CALIBRATION_STEPS + extra
    steps.run("train", base + ["--resume", "--max-steps", str(total), "--checkpoint-every", str(total)])
    return total


def measure_step_seconds(run: Path, steps: int, wall: float) -> tuple[float, float]:
    """(seconds per step, start-up seconds) of a finished training chunk, from the
    start/end events of RUN_DIR/logs/metrics.jsonl; the wall time alone when absent."""
    start = end = None
    try:
        for line in (run / "logs" / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "start":
                start = record.get("time")
            elif record.get("event") == "end":
                end = record.get("time")
    except (OSError, ValueError):
        pass
    if start is None or end is None or end <= start:
        return wall / steps, 0.0
    loop = end - start
    return loop / steps, max(0.0, wall - loop)


def _inception_weights(out: Path) -> tuple[Path | None, str]:
    """torchvision's cached ImageNet Inception-v3 when present (score's default), else a
    deterministic random network: the density features then only show that the path runs."""
    from infer.inception import save_random_weights, torchvision_cache_path

    cached = torchvision_cache_path()
    if os.path.exists(cached):
        return None, f"ImageNet weights from {cached}"
    path = out / "inception_random.pth"
    try:
        save_random_weights(str(path), seed=0)
    except Exception as exc:
        raise DemoError(f"writing the stand-in Inception-v3 weights to {path} failed: {exc}") from exc
    return path, (f"no ImageNet weights on this machine ({cached} is missing): a deterministic "
                  f"random Inception-v3 stands in, so the density features are not meaningful")


def collect_results(paths: dict[str, Path]) -> dict[str, list[str]]:
    """What the user opens: audio, plots, tables (whatever the steps wrote)."""
    def found(*patterns):
        return [str(p) for pattern in patterns for p in sorted(_glob(pattern))]

    gen, scores, run, windows = paths["generated"], paths["scores"], paths["run"], paths["windows"]
    return {
        "report": found((scores, "report.html")),
        "audio": found((gen, "*/mix.wav"), (gen, "*/drums.wav")),
        "plots": found((scores, "*.png"), (gen, "*/drums_mel.png"), (run / "logs", "*.png")),
        "tables": found((windows, "_summary.json"), (windows, "_errors.csv"),
                        (scores, "clips.csv"),
                        (scores, "errors.csv"), (scores, "summary.json"),
                        (run / "logs", "metrics.jsonl")),
    }


def _glob(pattern: tuple[Path, str]):
    folder, glob = pattern
    return folder.glob(glob) if folder.is_dir() else []


def _score_headline(scores: Path) -> dict:
    """Mean objective scores per generated set, from evaluate's summary.json (empty if absent)."""
    try:
        summary = json.loads((scores / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    headline = {}
    for label, s in (summary.get("sets") or {}).items():
        mean = s.get("mean") or {}
        headline[label] = {k: mean[k] for k in mean if k in ("stoi_mean", "level_error_db")
                           or k.startswith("rhythm_")}
        headline[label]["clips_scored"] = s.get("scored")
    return headline


def format_summary(summary: dict) -> str:
    steps = ", ".join(f"{name} {_duration(s)}" for name, s in summary["step_seconds"].items())
    lines = [f"demo finished in {_duration(summary['wall_seconds'])} ({steps}); "
             f"{summary['train_steps']} training steps", f"outputs under {summary['out']}"]
    titles = {"report": "listening report (open in a browser)",
              "audio": "audio (generated drums, and mixed with the original bass)",
              "plots": "plots", "tables": "tables"}
    for kind, title in titles.items():
        files = summary["results"].get(kind, [])
        lines.append(f"{title}:" if files else f"{title}: none written")
        lines += [f"  {f}" for f in files]
    for label, values in summary["scores"].items():
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in values.items())
        lines.append(f"scores ({label}): {shown}")
    lines.append(f"inception features: {summary['inception_weights']}")
    lines.append(f"summary: {Path(summary['out']) / 'demo_summary.json'}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the command line


def register(sub: argparse._SubParsersAction) -> None:
    _register_demo(sub)


DEMO_DESCRIPTION = """\
Run the whole pipeline on built-in data, on one local Ray started once.

  cycledrums demo demo-output --quick      # a minute: every step runs, nothing is learnt

The steps: synth (procedural songs, musdb18-HQ layout) -> prepare (Parquet windows)
-> train (a small CycleGAN for a few minutes) -> evaluate (drums for the test bass
lines, scored against their true drums, with the baselines and report.html), then a
summary with the paths of the audio, the plots and the tables.  Each step is the real
subcommand, called with its command-line arguments; the first one that fails stops
the demo with its name.  Outputs, under OUTPUT:
  data/ windows/ run/ scores/ (with scores/audio/cyclegan/<song>/) demo_summary.json
The Inception density features use torchvision's cached ImageNet weights when this
machine has them, else a deterministic random network (stated in the summary).
With --address (or $RAY_ADDRESS) the steps run on that Ray cluster instead; OUTPUT must
then be a path every node can reach (or run the demo itself through `submit`)."""


def _register_demo(sub) -> None:
    p = add_job_parser(
        sub, "demo",
        help="the whole pipeline on built-in data: synth -> prepare -> train -> evaluate",
        description=DEMO_DESCRIPTION,
    )
    p.add_argument("out", metavar="OUTPUT", nargs="?", default="demo-output",
                   help="output folder (default: demo-output)")
    p.add_argument("--tracks", type=int, default=None,
                   help="songs to synthesise; a third go to the test split (default: 12; --quick: 6)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each song in seconds (default: 30; --quick: 10)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--train-minutes", type=float, default=None,
                        help="training time budget; the step count is fitted to it after a short "
                             "timed first chunk (default: 5)")
    length.add_argument("--max-steps", type=int, default=None,
                        help="train exactly this many steps instead of a time budget (default: unset; "
                             "--quick: 4)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="Ray Train workers, data parallel (default: 2; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny data, model and run, for tests: the code paths run, nothing is learnt "
                        "(default: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic songs (default: 0)")
    p.add_argument("--data", choices=("synth", "grooves"), default="synth",
                   help="training data: 'synth' (built-in songs) or 'grooves' (human-played Groove MIDI "
                        "takes, their first --seconds; needs --groove-dir) (default: synth)")
    p.add_argument("--groove-dir", default=None,
                   help="with --data grooves: the Groove MIDI Dataset folder (with info.csv)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started "
                        "for the demo)")
    p.add_argument("--force", action="store_true",
                   help="clear OUTPUT first when it holds an earlier demo (default: refuse)")
    add_json_option(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    summary = run_demo(DemoOptions.from_args(args))
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    return 0
