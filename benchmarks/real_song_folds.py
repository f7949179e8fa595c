"""Train one model per held-out song on the other songs' real stems: the leave-one-song-out runs
that `real_songs.py --per-song-model` then judges.

    python benchmarks/real_song_folds.py STEMS_DIR [STEMS_DIR ...] OUT --steps N
        [--init-from RUN_DIR] [--with-windows WINDOWS] [--real-weight K] [--train-option=--flag=value ...]

For each song S with a bass and a drums stem (the songs `real_songs.py` finds, the same way):

1. OUT/S/songs/train/<song>/{bass,drums}.<ext>: links to every *other* song's stems, a `prepare`
   stems catalog (all in the train split); with `--mix-in other` the bass link points to the
   bass and other stems summed (OUT/_inputs/<song>/bass.wav, written once), the model's input;
2. `cycledrums prepare OUT/S/songs OUT/S/windows [--stride FRAMES]`: the other songs' windows, cut as
   for any track;
3. the training set, OUT/S/windows itself, or with `--with-windows` (e.g. the grooves recipe's
   window set) or `--real-weight K` a folder OUT/S/mix of links: the given set's train files and
   each real window file K times (a weighted mix of window sets without copying a byte);
4. `cycledrums train <set> OUT/S/run --max-steps N`, fine-tuned from `--init-from` (its
   architecture) or from scratch with the `--train-option`s given.

Every step is skipped when its output is already complete, and a run with checkpoints resumes,
so an interrupted benchmark picks up where it stopped.  Then:

    python benchmarks/real_songs.py STEMS_DIR ... SCORES --per-song-model tuned=OUT/{song}/run

OUT/<song>/fold.json records the fold's training songs, windows and wall times, and OUT/folds.json
every fold's so far.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_songs import BenchmarkError, Song, comma_list, cycledrums, find_songs, model_input  # noqa: E402


def link(target: Path, name: Path) -> None:
    """A symlink `name` -> `target`, replacing an older one."""
    name.parent.mkdir(parents=True, exist_ok=True)
    if name.is_symlink() or name.exists():
        name.unlink()
    name.symlink_to(target.resolve())


def input_stem(song: Song, inputs: Path) -> Path:
    """The stem `prepare` reads as the song's bass: the bass file itself, or with `--mix-in` the bass and
    those stems summed, written once as <inputs>/<song>/bass.wav (mono float at the codec's rate)."""
    if not song.mixed_in:
        return song.bass
    path = inputs / song.name / "bass.wav"
    if not path.exists():
        import soundfile as sf

        from pipelines.audio import load_audio
        from pipelines.mel import MelParams

        params = MelParams()
        summed = model_input(song, load_audio(str(song.bass), params.sample_rate).numpy(), params)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.wav")
        sf.write(partial, summed, params.sample_rate, subtype="FLOAT")
        partial.rename(path)
    return path


def song_catalog(songs: list[Song], held_out: Song, folder: Path, inputs: Path) -> list[str]:
    """Links to the other songs' stems as a `prepare` stems catalog, all in the train split."""
    training = [s for s in songs if s.name != held_out.name]
    for song in training:
        for path in (input_stem(song, inputs), song.drums):
            link(path, folder / "train" / song.name / (path.stem + path.suffix))
    return [s.name for s in training]


def window_files(windows: Path) -> list[Path]:
    return sorted((windows / "train").glob("*.parquet"))


def training_set(fold: Path, windows: Path, with_windows: Path | None, weight: int) -> Path:
    """The window set the fold trains on: its own windows, or a folder of links mixing them."""
    if with_windows is None and weight == 1:
        return windows
    mix = fold / "mix"
    for old in mix.glob("train/*.parquet"):
        old.unlink()
    if with_windows is not None:
        for path in window_files(with_windows):
            link(path, mix / "train" / f"with-{path.name}")
    for copy in range(weight):
        for path in window_files(windows):
            link(path, mix / "train" / f"real{copy}-{path.name}")
    return mix


def prepared(windows: Path) -> bool:
    return (windows / "_summary.json").exists()


def newest_step(run: Path) -> int | None:
    """The step of the run's newest checkpoint; None when it has none yet."""
    from train.checkpoint import list_checkpoints, read_progress

    checkpoints = list_checkpoints(str(run))
    return read_progress(checkpoints[-1]).get("step", -1) if checkpoints else None


def train_fold(fold: Path, data: Path, args, resume: bool) -> None:
    argv = ["train", str(data), str(fold / "run"), "--max-steps", str(args.steps),
            "--checkpoint-every", str(args.checkpoint_every or args.steps)]
    if resume:
        argv.append("--resume")
    elif args.init_from:
        argv += ["--init-from", str(Path(args.init_from).resolve())]
    argv += [option for given in args.train_option for option in given.split("=", 1) if option]
    cycledrums(*argv, log=fold / "train.log")


def run_fold(songs: list[Song], held_out: Song, out: Path, args) -> dict:
    fold = out / held_out.name
    record = {"held_out": held_out.name}
    record["training_songs"] = song_catalog(songs, held_out, fold / "songs", out / "_inputs")
    windows = fold / "windows"
    started = time.monotonic()
    if not prepared(windows):
        stride = ["--stride", str(args.stride)] if args.stride else []
        cycledrums("prepare", str(fold / "songs"), str(windows), *stride, log=fold / "prepare.log")
    record["prepare_s"] = round(time.monotonic() - started, 1)
    summary = json.loads((windows / "_summary.json").read_text())
    record["windows"] = summary["splits"]["train"]["windows"]
    data = training_set(fold, windows, Path(args.with_windows) if args.with_windows else None, args.real_weight)
    started = time.monotonic()
    step = newest_step(fold / "run")
    if step is None or step < args.steps:
        train_fold(fold, data, args, resume=step is not None)
    record["train_s"] = round(time.monotonic() - started, 1)
    record["run"] = str(fold / "run")
    return record


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("stems_dirs", nargs="+", metavar="STEMS_DIR", help="folders of song folders (or one song folder)")
    ap.add_argument("out", metavar="OUT", help="one folder per held-out song: links, windows, run")
    ap.add_argument("--steps", type=int, required=True, help="training steps per fold")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint interval (default: the run's end only)")
    ap.add_argument("--init-from", default=None, metavar="RUN_DIR", help="fine-tune this run (its architecture)")
    ap.add_argument("--with-windows", default=None, metavar="WINDOWS",
                    help="a window set whose train windows are mixed in (e.g. the grooves recipe's)")
    ap.add_argument("--real-weight", type=int, default=1, metavar="K",
                    help="each real window counted K times in the mix (default 1)")
    ap.add_argument("--stride", type=int, default=None, metavar="FRAMES",
                    help="prepare's --stride for the real songs' windows (default: prepare's, 206)")
    ap.add_argument("--train-option", action="append", default=[], metavar="--FLAG=VALUE",
                    help="an option handed to `cycledrums train` (repeat), e.g. --train-option=--ngf=16")
    ap.add_argument("--mix-in", type=comma_list, default=[], metavar="STEMS",
                    help="stems summed with the bass into the input, e.g. other (as real_songs.py --mix-in)")
    ap.add_argument("--songs", default=None, help="only these held-out songs (comma list; default all)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.real_weight < 1:
        ap.error("--steps and --real-weight must be at least 1")
    if args.with_windows and not window_files(Path(args.with_windows)):
        ap.error(f"--with-windows {args.with_windows}: no train/*.parquet window files there")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    try:
        songs, skipped = find_songs([Path(d) for d in args.stems_dirs], tuple(args.mix_in))
        if len(songs) < 2:
            raise BenchmarkError("leave-one-song-out needs at least two songs with bass and drums")
    except BenchmarkError as err:
        print(f"real_song_folds: {err}", file=sys.stderr)
        return 2
    for name, why in skipped.items():
        print(f"skipping {name}: {why}")
    chosen = set(args.songs.split(",")) if args.songs else {s.name for s in songs}
    for i, song in enumerate(s for s in songs if s.name in chosen):
        print(f"[{i + 1}/{len(chosen)}] without {song.name}: prepare, train {args.steps} steps ...", flush=True)
        record = run_fold(songs, song, out, args)
        # One file per fold, so two runs over different --songs side by side keep both records.
        (out / song.name / "fold.json").write_text(json.dumps(record, indent=2))
        print(f"  prepare {record['prepare_s']} s, train {record['train_s']} s: {record['run']}", flush=True)
    records = [json.loads((out / s.name / "fold.json").read_text()) for s in songs
               if (out / s.name / "fold.json").is_file()]
    (out / "folds.json").write_text(json.dumps({"args": vars(args), "folds": records}, indent=2))
    mix_in = f" --mix-in {','.join(args.mix_in)}" if args.mix_in else ""
    print(f"judge them: python benchmarks/real_songs.py {' '.join(args.stems_dirs)} SCORES "
          f"--per-song-model tuned={out}/{{song}}/run{mix_in}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
