"""The sanity ladder of every score metric on real stems (the Lithium excerpt) and on synth songs.

Cuts each source into clips (<clip>/drums.wav + bass.wav), runs `cycledrums score`
with its baselines (the true drums also stand as the scored set; clips are <song>/cNN, so the other-clip
baseline pairs clips of the same song), and prints the
ladder table from summary.json: per metric, the baseline sets' means (level_diff_db
as -|dB|) in ladder order, the per-clip win rates of the rungs (true > other clip,
other clip > noise, > silence, > bass copy) and the verdict.

  .venv/bin/python benchmarks/sanity_ladder.py [--clip-seconds 3.9] [--inception-weights PATH]

Without --inception-weights a seeded random Inception-v3 stands in: the density_*
rows then say only whether the path runs, not what real Inception features would do.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
RATE = 22050


def write_clips(drums: np.ndarray, bass: np.ndarray, root: Path, clip_seconds: float, prefix: str) -> int:
    n = int(clip_seconds * RATE)
    count = min(len(drums), len(bass)) // n
    for k in range(count):
        folder = root / prefix / f"c{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / "drums.wav", drums[k * n:(k + 1) * n], RATE, subtype="FLOAT")
        sf.write(folder / "bass.wav", bass[k * n:(k + 1) * n], RATE, subtype="FLOAT")
    return count


def mono(path: Path) -> np.ndarray:
    from pipelines.audio import load_audio

    return load_audio(str(path), RATE).numpy()


def lithium_clips(root: Path, clip_seconds: float) -> Path:
    drums, bass = mono(DATA / "lithium_drums_31s.ogg"), mono(DATA / "lithium_bass_31s.ogg")
    write_clips(drums, bass, root, clip_seconds, "lithium")
    return root


def synth_clips(root: Path, clip_seconds: float, tracks: int, seconds: float) -> Path:
    from pipelines.synth import write_dataset

    songs = root.parent / "synth_songs"
    write_dataset(songs, tracks=tracks, seconds=seconds, seed=0)
    for i, folder in enumerate(sorted(p.parent for p in songs.glob("*/*/drums.wav"))):
        write_clips(mono(folder / "drums.wav"), mono(folder / "bass.wav"), root, clip_seconds, f"song{i}")
    return root


def ladder(reference: Path, out: Path, weights: str) -> dict:
    from cycledrums_cli import main

    truth = out.parent / (out.name + "_truth")
    truth.mkdir(parents=True)
    for drums in sorted(reference.glob("*/*/drums.wav")):
        clip = drums.parent.relative_to(reference)
        (truth / clip.parent).mkdir(parents=True, exist_ok=True)
        (truth / f"{clip}.wav").write_bytes(drums.read_bytes())
    rc = main(["score", f"truth={truth}", str(reference), str(out), "--inception-weights", weights,
               "--baselines", "--inception-batch", "16"])
    if rc != 0:
        raise SystemExit(f"score exited {rc}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-seconds", type=float, default=3.9, help="clip length (default 3.9 s: 2 bars of Lithium)")
    ap.add_argument("--synth-tracks", type=int, default=4, help="synth songs (default 4)")
    ap.add_argument("--synth-seconds", type=float, default=16.0, help="seconds per synth song (default 16)")
    ap.add_argument("--inception-weights", default=None, help="real Inception-v3 weights (default: a random stand-in)")
    ap.add_argument("--out", default=None, help="keep the score outputs here (default: a temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from infer.inception import save_random_weights
    from infer.ladder import ladder_text

    tmp = Path(args.out or tempfile.mkdtemp(prefix="sanity-ladder-"))
    tmp.mkdir(parents=True, exist_ok=True)
    weights = args.inception_weights or save_random_weights(str(tmp / "inception_random.pth"), seed=0)
    sources = {"lithium": lithium_clips(tmp / "lithium", args.clip_seconds),
               "synth": synth_clips(tmp / "synth", args.clip_seconds, args.synth_tracks, args.synth_seconds)}
    for name, reference in sources.items():
        summary = ladder(reference, tmp / f"scores_{name}", weights)
        table = summary["sanity_ladder"]
        clips = next(iter(table.values()))["clips"]
        print(f"\n{name}: {summary['reference']['clips']} clips of {args.clip_seconds:g} s, {clips} with drums "
              f"playing (ladder clips); Inception: {'given' if args.inception_weights else 'random stand-in'}")
        print(ladder_text(table))


if __name__ == "__main__":
    main()
