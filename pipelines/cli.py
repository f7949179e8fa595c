"""Subcommands of the data side: synth (built-in data), grooves (Groove MIDI corpus), roundtrip
(codec check), prepare."""
from __future__ import annotations

import argparse
import json
import sys

from dataclasses import dataclass

from cluster.job_options import add_job_options, add_job_parser, add_json_option
from cluster.options import add_old_flag, add_option_flags, options_from_args
from cluster.resources import add_resource_options, parse_actors
from pipelines.codec_options import griffin_lim_option
from pipelines.groove_options import GrooveVariety


@dataclass
class RoundtripOptions:
    griffin_lim_iters: int = griffin_lim_option()


def register(sub: argparse._SubParsersAction) -> None:
    _register_synth(sub)
    _register_grooves(sub)
    _register_roundtrip(sub)
    _register_prepare(sub)


def _register_synth(sub) -> None:
    p = add_job_parser(
        sub, "synth",
        help="write the built-in synthetic multitrack data set",
        description="""\
Write the built-in data set: procedural songs in the musdb18-HQ layout.

  cycledrums synth data --tracks 12 --seconds 30

Writes OUTPUT/<split>/<track>/{mixture,bass,drums,other}.wav (44.1 kHz stereo,
16-bit) and OUTPUT/synth.json (each track's tempo, key and split).  Every song has a
tempo, a bass line on a 16th-note grid and drums locked to it (kick on every bass
note, snare on 2 and 4, hats on 8ths).  A third of the tracks (at least one, when
there are two or more) go to the test split.  The same seed gives the same files.""",
    )
    p.add_argument("out", metavar="OUTPUT", help="output folder (created if missing)")
    p.add_argument("--tracks", type=int, default=8, help="number of songs (default: 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each song in seconds (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_json_option(p)
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from cluster.errors import CliError
    from pipelines.synth import write_dataset

    try:
        plans = write_dataset(args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed)
    except OSError as err:  # e.g. a folder on the way to OUTPUT is a file, or no permission
        raise CliError(f"cannot write to {args.out}: {err.strerror or err} ({err.filename})") from err
    n_test = sum(p.split == "test" for p in plans)
    if args.json:
        print(json.dumps({"output": args.out, "tracks": len(plans), "train": len(plans) - n_test,
                          "test": n_test, "seconds": args.seconds}))
        return 0
    print(f"wrote {len(plans)} tracks ({len(plans) - n_test} train, {n_test} test) "
          f"of {args.seconds:g} s to {args.out}")
    return 0


def _register_grooves(sub) -> None:
    p = add_job_parser(
        sub, "grooves",
        help="render the Groove MIDI Dataset to a multitrack corpus of human-played drums + bass (Ray Data)",
        description="""\
Render Groove MIDI Dataset performances, each with a bass part composed for it, to a
multitrack data set in the musdb18-HQ layout (Ray Data).

  cycledrums grooves groove/ grooves-data --max-tracks 160 --max-seconds 40

GROOVE_DIR is the dataset's folder with info.csv and the drummer*/ MIDI files, local
or s3://.  Writes OUTPUT/<split>/<track>/{mixture,bass,drums}.wav (44.1 kHz stereo,
16-bit), OUTPUT/grooves.json (style, bpm, drummer, split per track; it lists every
track folder OUTPUT holds, so a re-run with another selection adds its tracks to the
earlier ones; remove a folder to drop a track) and OUTPUT/_errors.csv (unreadable or
empty MIDI files; the job goes on).

Drums: the performance rendered with a General MIDI SoundFont (pretty_midi's
TimGM6mb by default).  Bass: a part composed for the performance, starting on its
kicks (the drummer's timing kept) and, by style, some snares or off-beats, on a
seeded chord progression.  Takes: long 'beat' performances (no fills) of at least
--min-seconds.  The dataset's split is kept; its validation set is written as test.
One Ray task per performance.  The same seed gives the same files.

Variety, for data that looks like real songs (all off by default): several kits
(--soundfont a.sf2,b.sf2), bass programs drawn per take (--bass-programs), held notes
(--bass-skip), bars without bass (--bass-rests) and per-stem EQ, compression,
saturation and room (--processing); each take's choices go into grooves.json.""",
    )
    p.add_argument("groove_dir", metavar="GROOVE_DIR", help="Groove MIDI folder (with info.csv) or s3:// prefix")
    p.add_argument("out", metavar="OUTPUT", help="output folder or s3:// prefix (created if missing)")
    p.add_argument("--max-tracks", type=int, default=None,
                   help="render a seeded sample of this many performances, train/test proportions "
                   "kept (default: all selected)")
    p.add_argument("--styles", default=None,
                   help="comma-separated top-level styles to keep, e.g. 'rock,funk' (default: all)")
    p.add_argument("--splits", default="train,validation,test",
                   help="comma-separated dataset splits to render (default: train,validation,test)")
    p.add_argument("--min-seconds", type=float, default=8.0,
                   help="skip performances shorter than this (default: 8; one training window is 5.9 s)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="keep only the first this many seconds of each take (default: whole takes)")
    p.add_argument("--include-fills", action="store_true", help="also render the short 'fill' takes")
    p.add_argument("--seed", type=int, default=0, help="random seed for the sample and the bass parts (default: 0)")
    p.add_argument("--in-process", action="store_true",
                   help="render in this process instead of Ray tasks (small corpora, debugging)")
    add_option_flags(p, GrooveVariety)
    add_job_options(p)
    p.set_defaults(func=_run_grooves)


def _split_list(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _run_grooves(args) -> int:
    from cluster.errors import CliError
    from pipelines.grooves import GroovesConfig, format_summary, run_grooves

    cfg = GroovesConfig(
        groove_dir=args.groove_dir, out=args.out, max_tracks=args.max_tracks,
        styles=_split_list(args.styles), splits=_split_list(args.splits) or [],
        seed=args.seed, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
        include_fills=args.include_fills, s3_endpoint_url=args.s3_endpoint_url, address=args.address,
        **options_from_args(GrooveVariety, args),
    )
    summary = run_grooves(cfg, in_process=args.in_process)
    print(json.dumps(summary) if args.json else format_summary(summary))
    if summary["tracks_ok"] == 0:
        raise CliError("no track was written (every selected performance failed; see _errors.csv)")
    return 0


def _register_roundtrip(sub) -> None:
    p = add_job_parser(
        sub, "roundtrip",
        help="hear what the mel representation costs: audio -> mel/dB/uint8 -> audio",
        description="""\
Send an audio file through the model's representation and back, to hear what it costs.

  cycledrums roundtrip drums.wav drums-roundtrip.wav --griffin-lim-iters 32

There: 22,050 Hz mono, 256-bin mel power spectrogram, dB over the fixed range, uint8.
Back: the pseudo-inverse of the mel filter bank, then Griffin-Lim.  Writes OUTPUT as a
22,050 Hz mono 16-bit WAV and prints the mel-domain error: OUTPUT re-analysed vs
INPUT, mean absolute dB difference over the fixed dB range.  INPUT may be any format
soundfile reads (WAV, FLAC, OGG, MP3).""",
    )
    p.add_argument("input", metavar="INPUT", help="input audio file")
    p.add_argument("output", metavar="OUTPUT", help="output WAV file")
    add_option_flags(p, RoundtripOptions, old_names={"griffin_lim_iters": ["--iterations"]})
    p.add_argument("--json", action="store_true", help="print one JSON object (mel_mae_db, seconds, realtime_factor, ...)")
    p.set_defaults(func=_run_roundtrip)


def _run_roundtrip(args) -> int:
    from cluster.errors import CliError
    from pipelines.roundtrip import roundtrip_file

    iterations = RoundtripOptions(**options_from_args(RoundtripOptions, args)).griffin_lim_iters
    if iterations < 1:
        raise CliError(f"--griffin-lim-iters must be at least 1, got {iterations}")
    result = roundtrip_file(args.input, args.output, iterations=iterations)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['output']}: {result['seconds']:.2f} s of audio, "
              f"mel error {result['mel_mae_db']:.2f} dB (mean absolute, range {result['db_range']}), "
              f"{result['realtime_factor']:.1f}x real time at {result['griffin_lim_iterations']} iterations")
    return 0


def _register_prepare(sub) -> None:
    p = add_job_parser(
        sub, "prepare",
        help="turn a song catalog into Parquet training windows (Ray Data)",
        description="""\
Turn a song catalog into paired bass/drums mel windows for training (Ray Data).

  cycledrums prepare s3://bucket/musdb18hq s3://bucket/windows

INPUT and OUTPUT are local folders or s3:// prefixes.  Two layouts (--layout; by
default detected):
  stems  musdb18-HQ folders <split>/<track>/{bass,drums,...}.wav|.flac (the train/test
         folders give the split);
  mixes  a tree of songs (MP3/OGG/WAV/FLAC), separated with Demucs, split by a hash of
         the track id, optionally filtered with FMA's tracks.csv (albums with the
         word 'live' in the title are dropped).
Writes OUTPUT/{train,test}/<track>.parquet (one file per track, 256x256 uint8
windows, 50 frames overlap or --stride, mel parameters in the file metadata), OUTPUT/_errors.csv
(track, path, stage, reason, outcome: failures, such as corrupt, truncated or silent
files, and tracks kept with a warning) and OUTPUT/_summary.json (this run, and what
OUTPUT holds).  Tracks already in OUTPUT are skipped unless --overwrite.  Exit status
1 when OUTPUT holds no window after the run, or when tracks failed on storage faults
(a re-run retries them).  S3 credentials come from the standard AWS environment.""",
    )
    p.add_argument("input", metavar="INPUT", help="folder or s3:// prefix holding the catalog")
    p.add_argument("output", metavar="OUTPUT", help="folder or s3:// prefix for the window data set")
    p.add_argument("--layout", choices=("stems", "mixes"), default=None,
                   help="input layout (default: detected; 'stems' if any folder holds bass/drums files)")
    p.add_argument("--genres", default=None,
                   help="mixes: comma-separated FMA top-level genres to keep, e.g. 'Pop,Soul-RnB,Rock' "
                   "(default: all; needs tracks.csv)")
    p.add_argument("--tracks-csv", default=None,
                   help="mixes: FMA tracks.csv (default: INPUT/tracks.csv when it exists)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of tracks hashed into the test split when no train/test folders "
                   "give it (default: 0.1)")
    p.add_argument("--min-level-db", type=float, default=-10.0,
                   help="drop windows whose bass or drums mean mel power is below this many dB "
                   "(near silent; default: -10)")
    p.add_argument("--stride", type=int, default=None, metavar="FRAMES",
                   help="frames between window starts (default: 206, i.e. 50 frames overlap). A smaller "
                   "stride cuts more, overlapping windows from the same audio, e.g. 64 for a few "
                   "songs of your own (about 3x the windows)")
    p.add_argument("--demucs-model", default="htdemucs",
                   help="mixes: Demucs pretrained name (downloaded once from Demucs' repository, "
                   "checksummed) or a local model folder / .th / .yaml file (default: htdemucs). "
                   "Local .th files are read weights-only: tensors and the Demucs model classes, "
                   "nothing that runs code; a file that needs more is refused. Use local files "
                   "only from a source you trust")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="cap on the logical CPUs this job uses (default: all of the cluster's)")
    p.add_argument("--limit", type=int, default=None,
                   help="process at most this many tracks in this run (default: all)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo tracks already in OUTPUT (default: skip them)")
    add_resource_options(p, what="mixes: Demucs",
                         cpu_default="1 actor using all the CPUs but one as torch threads")
    add_old_flag(p, "--separators", "--actors", dest="actors", type=parse_actors)  # the same, said twice
    add_job_options(p)
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    from cluster.resources import ResourceRequest
    from pipelines.prepare import PrepareConfig, exit_problem, format_summary, run_prepare

    genres = [g.strip() for g in args.genres.split(",") if g.strip()] if args.genres else None
    cfg = PrepareConfig(
        input=args.input, output=args.output, layout=args.layout, genres=genres,
        tracks_csv=args.tracks_csv, test_fraction=args.test_fraction,
        min_level_db=args.min_level_db, stride=args.stride, demucs_model=args.demucs_model,
        num_cpus=args.num_cpus, overwrite=args.overwrite,
        limit=args.limit, s3_endpoint_url=args.s3_endpoint_url, address=args.address,
        resources=ResourceRequest.from_args(args),
    )
    summary = run_prepare(cfg)
    print(json.dumps(summary) if args.json else format_summary(summary))
    problem = exit_problem(summary)
    if problem:
        print(f"cycledrums prepare: {problem}", file=sys.stderr)
        return 1
    return 0
