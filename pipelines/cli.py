"""Subcommands of the data side: synth (built-in data), roundtrip (codec check), prepare."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    _register_synth(sub)
    _register_roundtrip(sub)


def _register_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write the built-in synthetic multitrack data set",
        description="Write a small multitrack data set of procedural songs in the musdb18-HQ layout: "
        "OUT/<split>/<track>/{mixture,bass,drums,other}.wav (44.1 kHz stereo, 16-bit), plus "
        "OUT/synth.json with each track's tempo, key and split. Every song has a tempo, a bass line "
        "on a 16th-note grid and drums locked to it (kick on every bass note, snare on 2 and 4, hats "
        "on 8ths). A third of the tracks (at least one, when there are two or more) go to the test "
        "split. The same seed gives the same files.",
    )
    p.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    p.add_argument("--tracks", type=int, default=8, help="number of songs (default: 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each song in seconds (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from cycledrums_cli import CliError
    from pipelines.synth import write_dataset

    try:
        plans = write_dataset(args.out, tracks=args.tracks, seconds=args.seconds, seed=args.seed)
    except ValueError as err:
        raise CliError(str(err)) from err
    n_test = sum(p.split == "test" for p in plans)
    print(f"wrote {len(plans)} tracks ({len(plans) - n_test} train, {n_test} test) "
          f"of {args.seconds:g} s to {args.out}")
    return 0


def _register_roundtrip(sub) -> None:
    p = sub.add_parser(
        "roundtrip",
        help="hear what the mel representation costs: audio -> mel/dB/uint8 -> audio",
        description="Send IN through the model's representation (22,050 Hz mono, 256-bin mel power "
        "spectrogram, dB over the fixed range, uint8) and back (pseudo-inverse of the mel filter bank, "
        "Griffin-Lim), write the result to OUT as a 22,050 Hz mono 16-bit WAV, and print the mel-domain "
        "error: OUT re-analysed vs IN, mean absolute dB difference over the fixed dB range. "
        "IN may be any format soundfile reads (WAV, FLAC, OGG, MP3).",
    )
    p.add_argument("input", metavar="IN", help="input audio file")
    p.add_argument("output", metavar="OUT", help="output WAV file")
    p.add_argument("--iterations", type=int, default=32, help="Griffin-Lim iterations (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object (mel_mae_db, seconds, realtime_factor, ...)")
    p.set_defaults(func=_run_roundtrip)


def _run_roundtrip(args) -> int:
    from cycledrums_cli import CliError
    from pipelines.audio import AudioError
    from pipelines.roundtrip import roundtrip_file

    if args.iterations < 1:
        raise CliError(f"--iterations must be at least 1, got {args.iterations}")
    try:
        result = roundtrip_file(args.input, args.output, iterations=args.iterations)
    except (FileNotFoundError, AudioError) as err:
        raise CliError(str(err)) from err
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['output']}: {result['seconds']:.2f} s of audio, "
              f"mel error {result['mel_mae_db']:.2f} dB (mean absolute, range {result['db_range']}), "
              f"{result['realtime_factor']:.1f}x real time at {result['griffin_lim_iterations']} iterations")
    return 0
