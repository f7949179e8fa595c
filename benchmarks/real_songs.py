"""Real-song benchmark: `cycledrums evaluate` leave-one-song-out over multitrack songs.

    python benchmarks/real_songs.py STEMS_DIR [STEMS_DIR ...] OUT --model NAME=RUN_DIR
        [--model NAME=RUN_DIR ...] [--per-song-model NAME=TEMPLATE] [--untrained RUN_DIR]
        [--max-clips-per-song N] [--inception-weights PATH] [--mix-in STEMS]

STEMS_DIR is a folder of song folders, `<song>/bass.*` + `<song>/drums.*` (other stems
such as other.* or mixture.* are ignored), or one song folder itself.  Songs without a
bass or drums stem are skipped, with a line saying so.

Each song is cut into clips the way `cycledrums prepare` windows a track (decoded to
mono at the codec's rate, 256-frame windows every 206 frames, full windows only,
windows where the bass or the drums are near silent dropped: the same code), written
as OUT/<song>/testset/<song>/w<window>/{bass,drums}.wav, then `cycledrums evaluate`
runs on that song alone (a subprocess, the command a user runs) with every baseline:
the true drums, another clip's drums (another window of the same song), the bass copy,
shaped noise and silence; its outputs are in OUT/<song>/evaluate/ (report.html too).

`--mix-in other` sums other stems into the model's input (the song without its drums; the
paper's Demucs bass carried bleed of the rest): bass.wav is then that sum, so the bass-copy
baseline copies the whole input, and bass_stem.wav the bass alone, where the rests are
found.  The clips are the same windows either way.

Leave-one-song-out: a `--per-song-model NAME=TEMPLATE` path holds `{song}`, and the
fold of song S uses the model trained without S (TEMPLATE with {song} = S).  A
`--model NAME=RUN_DIR` applies to every fold (a model that never saw any of the songs,
such as the grooves recipe's).  The untrained baseline is `--untrained RUN_DIR` (the
same architecture at its initialisation, `cycledrums train ... --max-steps 1 --lr 0`);
without it the script makes one that way, with the first model's --ngf/--ndf/--n-blocks,
from the first song's windows (lr 0: the data does not change the weights).

Printed per held-out song and over all songs (every song's clips pooled): the sanity
ladder verdict per metric (does it rank true drums > another clip's drums > noise /
silence / bass copy?) and, for each metric that passes, every model against the
untrained network, the bass copy and another clip's drums (means over the ladder's
clips, those where the true drums play; level_diff_db as the mean |dB| off, lower is
better, every other metric higher is better).  Also written: OUT/real_songs.json and
the same tables as markdown, OUT/real_songs.md.

Where the bass rests (issue #30): evaluate runs with --keep-audio, so every generated
clip's drums.wav is kept (OUT/<song>/evaluate/audio/<set>/<clip>/drums.wav), and for
each clip with rests (infer.bass_rests: frames where the bass is near silent, 0.5 s or
more of them) the figures over those frames alone: the clips with rests and their rest
share, the generated minus true drums level (dB, signed mean: a hum is well above 0,
silence well under), the onset agreement with the true drums (clips where the true drums
play there) and the steadiness (the hum indicator: ~1 a steady hum, ~0.7 noise, drums
low), per set: each model, the untrained network, another clip's drums, the bass copy,
shaped noise, and the true drums (level 0 and onsets 1 by definition; their steadiness
is the reference).

Why a model's rhythm_pattern falls short: a third table per song and pooled splits it, per clip,
into infer.features.pattern_parts (the mean of their product is the pattern evaluate scored): the
gate (1: the drums are as unlike the bass as the true drums), the strength (1: onsets as strong as
the true drums', band by band) and the correlation (1: the true drums' pattern), for each model,
the untrained network and another clip's drums.

Without --inception-weights the torchvision ImageNet weights are used when they are in
torch's cache, else a seeded random Inception-v3 (the density_* metrics then say
little; the output says which).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, as the jobs below run them

UNTRAINED = "untrained"
# The baselines each model is compared with, and the ceiling, in column order.
COMPARED = ("bass-copy", "other-clip", "true-drums")
# The sets of the rest table, after the models, in column order.
REST_SETS = (UNTRAINED, "other-clip", "bass-copy", "shaped-noise", "true-drums")
REST_COLUMNS = (("clips with rests", "clips", "{:d}"), ("rest share", "rest_share", "{:.2f}"),
                ("level diff dB (0 best; a hum is > 0)", "level_diff_db", "{:+.1f}"),
                ("onset agreement (1 best)", "onset_agreement", "{:.3f}"),
                ("steadiness (hum ~1, drums low)", "steadiness", "{:.3f}"))
BEATEN = (UNTRAINED, "bass-copy", "other-clip")
# rhythm_pattern split into the parts infer.features.pattern_parts gives, for these sets after the models.
PART_SETS = (UNTRAINED, "other-clip")
PARTS = ("gate", "strength", "correlation")
PART_ROWS = (("gate (1: as unlike the bass as the true drums)", "gate"),
             ("strength (1: onsets as strong as the true drums')", "strength"),
             ("correlation (1: the true drums' pattern)", "correlation"),
             ("rhythm_pattern (the product, clip mean)", "rhythm_pattern"))
STEM_NAMES = ("bass", "drums")
# A clip's bass alone, beside its bass.wav when other stems are mixed into the input: the rests' reference.
REST_REFERENCE = "bass_stem"


class BenchmarkError(Exception):
    """A problem with the benchmark's inputs: one line, exit 2."""


@dataclass
class Song:
    name: str
    bass: Path
    drums: Path
    mixed_in: tuple[Path, ...] = ()  # stems summed with the bass into the model's input (--mix-in)


@dataclass
class Fold:
    song: Song
    clips: int = 0
    windows: int = 0
    models: dict = field(default_factory=dict)   # label -> checkpoint or run folder
    output: Path | None = None


# ---------------------------------------------------------------- finding songs


def _stem_file(folder: Path, stem: str) -> Path | None:
    from infer.sources import is_audio_name

    found = sorted(p for p in folder.iterdir() if p.is_file() and p.stem == stem and is_audio_name(p.name))
    return found[0] if found else None


def find_songs(stems_dirs: list[Path], mix_in: tuple[str, ...] = ()) -> tuple[list[Song], dict[str, str]]:
    """Songs with bass and drums (and the `mix_in` stems) under the folders, and {folder name: why skipped}
    for the others."""
    songs, skipped = [], {}
    for root in stems_dirs:
        if not root.is_dir():
            raise BenchmarkError(f"stems folder not found: {root}")
        folders = [root] if _stem_file(root, "drums") else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in folders:
            stems = {stem: _stem_file(folder, stem) for stem in STEM_NAMES + tuple(mix_in)}
            missing = [stem for stem, path in stems.items() if path is None]
            if missing:
                skipped[folder.name] = f"no {' or '.join(missing)} stem in {folder}"
            elif any(s.name == folder.name for s in songs):
                raise BenchmarkError(f"two songs are named {folder.name!r}; rename one folder")
            else:
                songs.append(Song(folder.name, stems["bass"], stems["drums"], tuple(stems[s] for s in mix_in)))
    if not songs:
        raise BenchmarkError(f"no song folder with both a bass.* and a drums.* stem under "
                             f"{', '.join(map(str, stems_dirs))}")
    return songs, skipped


# ---------------------------------------------------------------- cutting clips as prepare does


def song_windows(song: Song, params):
    """(bass, drums mono audio, prepare's window table of the song): the windows prepare would keep."""
    from pipelines.audio import load_audio
    from pipelines.windows import track_windows

    bass, drums = (load_audio(str(path), params.sample_rate) for path in (song.bass, song.drums))
    n = min(bass.shape[-1], drums.shape[-1])
    table, _ = track_windows(song.name, "test", bass[:n], drums[:n], params)
    return bass[:n].numpy(), drums[:n].numpy(), table


def model_input(song: Song, bass: np.ndarray, params) -> np.ndarray:
    """The model's input: the bass, plus the `--mix-in` stems (mono at the codec's rate, the bass's length)."""
    from pipelines.audio import load_audio

    out = bass.copy()
    for path in song.mixed_in:
        stem = load_audio(str(path), params.sample_rate).numpy()[:len(out)]
        out[:len(stem)] += stem
    return out


def pick_windows(table, max_clips: int, seed: int, song: str) -> list[int]:
    """Row indices of the windows to evaluate: all, or a seeded sample of `max_clips` (in song order)."""
    from infer.baselines import stable_seed

    rows = list(range(table.num_rows))
    if max_clips and len(rows) > max_clips:
        rows = sorted(np.random.default_rng(stable_seed(seed, song)).choice(rows, max_clips, replace=False))
    return [int(r) for r in rows]


def cut_clips(song: Song, testset: Path, max_clips: int, seed: int) -> tuple[int, int]:
    """Write the song's clips as <testset>/<song>/w<window>/{bass,drums}.wav; (clips, windows kept by prepare).

    With `--mix-in` stems, bass.wav is the model's input (the bass and those stems summed, so the
    bass-copy baseline copies the whole input) and bass_stem.wav the bass alone, where the rests
    are found; the windows are chosen on the bass alone, so the clips are the same either way."""
    import shutil

    import soundfile as sf

    from pipelines.mel import MelParams

    params = MelParams()
    shutil.rmtree(testset, ignore_errors=True)  # a previous run's clips (another sample) must not stay
    bass, drums, table = song_windows(song, params)
    stems = {"bass": model_input(song, bass, params), "drums": drums}
    if song.mixed_in:
        stems[REST_REFERENCE] = bass
    windows, starts = table.column("window").to_pylist(), table.column("start_frame").to_pylist()
    chosen = pick_windows(table, max_clips, seed, song.name)
    for row in chosen:
        folder = testset / song.name / f"w{windows[row]:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        first = starts[row] * params.hop_length
        for name, audio in stems.items():
            sf.write(folder / f"{name}.wav", audio[first:first + params.window_samples], params.sample_rate,
                     subtype="FLOAT")
    return len(chosen), table.num_rows


# ---------------------------------------------------------------- models


def parse_models(specs: list[str], option: str, per_song: bool) -> dict[str, str]:
    out = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise BenchmarkError(f"{option} {spec!r}: expected NAME=PATH")
        if per_song and "{song}" not in path:
            raise BenchmarkError(f"{option} {spec!r}: the path must hold {{song}} (the held-out song's name)")
        if label in out or label == UNTRAINED:
            raise BenchmarkError(f"{option}: the name {label!r} is taken; give each model its own")
        out[label] = os.path.abspath(path)
    return out


def fold_models(song: str, models: dict[str, str], per_song: dict[str, str]) -> dict[str, str]:
    """{label: checkpoint} of one fold: the shared models, and the per-song ones with {song} filled in."""
    out = dict(models)
    for label, template in per_song.items():
        path = template.replace("{song}", song)
        if not os.path.exists(path):
            raise BenchmarkError(f"--per-song-model {label}: no model for held-out song {song!r} at {path}")
        out[label] = path
    return out


def cycledrums(*argv: str, log: Path) -> None:
    """Run one `cycledrums` job as a user does (its own process); its output goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-m", "cycledrums_cli", *argv], stdout=f, stderr=subprocess.STDOUT,
                              env=env)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"cycledrums {argv[0]} exited {done.returncode} (log: {log}):\n  " + "\n  ".join(tail))


def make_untrained(model: str, song: Song, out: Path) -> str:
    """`cycledrums train --max-steps 1 --lr 0` with the model's architecture, on the song's windows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.mel import MelParams
    from train.checkpoint import read_config, resolve_checkpoint

    config = read_config(resolve_checkpoint(model))
    windows = out / "_untrained" / "windows"
    (windows / "train").mkdir(parents=True, exist_ok=True)
    _, _, table = song_windows(song, MelParams())
    split = table.schema.get_field_index("split")
    table = table.set_column(split, table.schema.field(split), pa.array(["train"] * table.num_rows, pa.string()))
    pq.write_table(table, windows / "train" / f"{song.name}.parquet")
    run = out / "_untrained" / "run"
    cycledrums("train", str(windows), str(run), "--model", config.get("model", "cyclegan"),
               "--ngf", str(config["ngf"]), "--ndf", str(config["ndf"]), "--n-blocks", str(config["n_blocks"]),
               "--max-steps", "1", "--lr", "0", log=out / "_untrained" / "train.log")
    return str(run)


def inception_weights(given: str | None, out: Path) -> tuple[str, str]:
    """(weights file, what it is): the given file, torchvision's cached ImageNet weights, or a random stand-in."""
    from infer.inception import WeightsNotFound, resolve_weights, save_random_weights

    if given:
        return os.path.abspath(given), "given"
    try:
        return resolve_weights(None), "ImageNet (torchvision cache)"
    except WeightsNotFound:
        path = out / "inception_random.pth"
        if not path.exists():
            save_random_weights(str(path), seed=0)
        return str(path), "seeded random stand-in (no ImageNet weights: density_* say little)"


# ---------------------------------------------------------------- the comparison


def load_clips(evaluate_output: Path):
    import pandas as pd

    return pd.read_parquet(evaluate_output / "clips.parquet")


def set_means(table, metric: str, labels: list[str]) -> dict[str, float]:
    """Mean of `metric` per set over the ladder's clips (true drums playing); level as mean |dB| off."""
    rows = table[table["drums_active"] & table["set"].isin(labels)]
    values = rows[metric].abs() if metric == "level_diff_db" else rows[metric]
    return {label: float(v) for label, v in values.groupby(rows["set"]).mean().items()}


def better(metric: str, a: float, b: float) -> bool:
    return a < b if metric == "level_diff_db" else a > b


def judge(table, model_labels: list[str]) -> dict:
    """The ladder per metric and, for the passing ones, the models against the baselines."""
    from infer.ladder import sanity_ladder
    from infer.score_summary import ladder_metrics

    ladder = sanity_ladder(table, ladder_metrics()) or {}
    labels = model_labels + [UNTRAINED] + list(COMPARED)
    compared = {}
    for metric, record in ladder.items():
        if not record["passes"]:
            continue
        means = set_means(table, metric, labels)
        compared[metric] = {"means": means, "beats": {
            label: {other: better(metric, means[label], means[other]) for other in BEATEN if other in means}
            for label in model_labels if label in means}}
    clips = int(table.loc[table["baseline"], "clip_id"].nunique())
    return {"clips": clips, "ladder_clips": next(iter(ladder.values()))["clips"] if ladder else 0,
            "ladder": {metric: record["passes"] for metric, record in ladder.items()},
            "failed_rungs": {metric: [f"{r['higher']} > {r['lower']}" for r in record["rungs"] if not r["passes"]]
                             for metric, record in ladder.items() if not record["passes"]},
            "compared": compared}


# ---------------------------------------------------------------- where the bass rests


def clip_images(testset: Path, clip_id: str, params) -> dict[str, np.ndarray]:
    """{"bass", "drums", "rests"} mel images of one clip, as score analyses its files ("bass" is the
    model's input; "rests", the bass alone, where the rests are found)."""
    from infer.score_stages import load_mel_image

    images = {stem: load_mel_image(str(testset / clip_id / f"{stem}.wav"), params) for stem in STEM_NAMES}
    alone = testset / clip_id / f"{REST_REFERENCE}.wav"
    images["rests"] = load_mel_image(str(alone), params) if alone.exists() else images["bass"]
    return images


def set_images(table, clip_id: str, images: dict, labels: list[str], testset: Path, params,
               seed: int) -> dict[str, np.ndarray]:
    """{set: drums image} of one clip: the models' kept drums.wav, and the baselines as score makes them."""
    from infer.baselines import NOISE, fit_frames, shaped_noise_image, stable_seed
    from infer.score_stages import load_mel_image

    rows = table[table["clip_id"] == clip_id].set_index("set")["generated"]
    out = {}
    for label in labels + [UNTRAINED]:
        if label in rows.index and rows[label]:
            out[label] = load_mel_image(rows[label], params)
    if "other-clip" in rows.index and rows["other-clip"]:
        other = clip_images(testset, rows["other-clip"], params)["drums"]
        out["other-clip"] = fit_frames(other, images["drums"].shape[1])
    out["bass-copy"] = images["bass"]
    out["shaped-noise"] = shaped_noise_image(images["drums"], params, stable_seed(seed, clip_id, NOISE))
    out["true-drums"] = images["drums"]
    return out


def clip_figures(table, testset: Path, labels: list[str], seed: int) -> tuple[dict, dict]:
    """Both per-clip tables, each clip's images decoded once: {clip id: {set: bass_rests figures}}
    for the clips with rests (the others: None), and {clip id: {set: pattern_parts}} for the
    clips where the true drums play (the ladder's)."""
    from infer.bass_rests import rest_figures
    from pipelines.mel import MelParams

    params = MelParams()
    truth = table[table["set"] == "true-drums"]
    playing = set(truth.loc[truth["drums_active"], "clip_id"])
    rests, parts = {}, {}
    for clip_id in sorted(truth["clip_id"].unique()):
        images = clip_images(testset, clip_id, params)
        sets = set_images(table, clip_id, images, labels, testset, params, seed)
        figures = {label: rest_figures(image, images["drums"], images["rests"], params, input_image=images["bass"])
                   for label, image in sets.items()}
        rests[clip_id] = figures if figures["true-drums"] is not None else None
        if clip_id in playing:
            parts[clip_id] = clip_pattern_parts(images, sets, labels, params)
    return rests, parts


def rest_summary(per_clip: dict[str, dict | None], labels: list[str]) -> dict:
    """Per set, the means of the rest figures over the clips with rests (onsets: where the true drums play)."""
    with_rests = [f for f in per_clip.values() if f is not None]
    sets = {}
    for label in labels + list(REST_SETS):
        figures = [f[label] for f in with_rests if f.get(label) is not None]
        if not figures:
            continue
        onsets = [f["onset_agreement"] for f in figures if f["onset_agreement"] is not None]
        sets[label] = {"clips": len(figures), "onset_clips": len(onsets),
                       "onset_agreement": float(np.mean(onsets)) if onsets else None,
                       **{k: float(np.mean([f[k] for f in figures]))
                          for k in ("rest_share", "level_diff_db", "true_level_db", "steadiness", "tone_share")}}
    return {"clips": len(per_clip), "clips_with_rests": len(with_rests), "sets": sets, "per_clip": per_clip}


def rest_markdown(title: str, rests: dict, model_labels: list[str]) -> str:
    head = [f"#### {title}, where the bass rests: {rests['clips_with_rests']} of {rests['clips']} clips", ""]
    if not rests["clips_with_rests"]:
        return "\n".join(head + ["No clip has 0.5 s of bass rests: nothing to measure.", ""])
    columns = [c for c in model_labels + list(REST_SETS) if c in rests["sets"]]
    lines = head + ["| where the bass rests | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, key, fmt in REST_COLUMNS:
        cells = [rests["sets"][c][key] for c in columns]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else fmt.format(v) for v in cells) + " |")
    return "\n".join(lines + [""])


# ---------------------------------------------------------------- rhythm_pattern in parts


def clip_pattern_parts(images: dict, sets: dict, labels: list[str], params) -> dict[str, dict]:
    """{set: infer.features.pattern_parts} of one clip, for the models, the untrained network and
    another clip's drums."""
    import torch

    from infer.features import pattern_parts
    from pipelines.mel import dequantize

    def db(image: np.ndarray) -> np.ndarray:
        # As score analyses a clip (float32 dequantize), so the parts' product is evaluate's pattern.
        return dequantize(torch.from_numpy(np.ascontiguousarray(image)), params).numpy().astype(np.float64)

    true, bass = db(images["drums"]), db(images["bass"])
    return {label: pattern_parts(db(sets[label]), true, bass, params.sample_rate / params.hop_length,
                                 params.sample_rate)
            for label in labels + list(PART_SETS) if label in sets}


def parts_summary(per_clip: dict[str, dict], labels: list[str]) -> dict:
    """Per set, the means over the clips of each part and of their product (the clip's rhythm_pattern)."""
    sets = {}
    for label in labels + list(PART_SETS):
        parts = [clip[label] for clip in per_clip.values() if clip.get(label) is not None]
        if parts:
            sets[label] = {"clips": len(parts), **{k: float(np.mean([p[k] for p in parts])) for k in PARTS},
                           "rhythm_pattern": float(np.mean([np.prod([p[k] for k in PARTS]) for p in parts]))}
    return {"sets": sets, "per_clip": per_clip}


def parts_markdown(title: str, parts: dict, model_labels: list[str]) -> str:
    columns = [c for c in model_labels + list(PART_SETS) if c in parts["sets"]]
    if not columns:
        return ""
    lines = [f"#### {title}, rhythm_pattern in parts (per clip: gate x strength x correlation)", "",
             "| part | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, key in PART_ROWS:
        lines.append(f"| {name} | " + " | ".join(f"{parts['sets'][c][key]:.3f}" for c in columns) + " |")
    return "\n".join(lines + [""])


# ---------------------------------------------------------------- printing


def markdown(title: str, result: dict, model_labels: list[str]) -> str:
    passing = [m for m, ok in result["ladder"].items() if ok]
    failing = [f"{m} (not {', '.join(rungs)})" for m, rungs in result["failed_rungs"].items()]
    lines = [f"### {title}: {result['clips']} clips ({result['ladder_clips']} with drums playing)", "",
             f"Ladder passes: {', '.join(passing) or 'none'}; fails: {', '.join(failing) or 'none'}.", ""]
    if not passing:
        return "\n".join(lines + ["No metric passes the ladder on these clips: nothing to compare.", ""])
    columns = model_labels + [UNTRAINED] + list(COMPARED)
    lines += ["| metric | " + " | ".join(columns) + " | beats untrained / bass copy / other clip |",
              "|---" * (len(columns) + 2) + "|"]
    for metric in passing:
        record = result["compared"][metric]
        cells = [f"{record['means'][c]:.3f}" if c in record["means"] else "-" for c in columns]
        beats = "; ".join(f"{label} " + "".join("✓" if ok else "✗" for ok in record["beats"][label].values())
                          for label in model_labels if label in record["beats"])
        name = "level error dB (lower is better)" if metric == "level_diff_db" else metric
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {beats} |")
    return "\n".join(lines + [""])


def report_text(results: dict, model_labels: list[str]) -> str:
    def sections(title: str, result: dict) -> list[str]:
        return [markdown(title, result, model_labels), parts_markdown(title, result["pattern_parts"], model_labels),
                rest_markdown(title, result["rests"], model_labels)]

    parts = [part for song, result in results["songs"].items() for part in sections(f"held out: {song}", result)]
    parts += sections(f"all {len(results['songs'])} songs pooled", results["overall"])
    head = ["# Real-song benchmark", "", "Models: " + ", ".join(
        f"{label} = {spec}" for label, spec in results["models"].items()) + f"; untrained = {results['untrained']}",
        f"Inception: {results['inception']}", ""]
    skipped = [f"Skipped: {song} ({why})" for song, why in results["skipped"].items()]
    return "\n".join(head + skipped + ([""] if skipped else []) + parts)


# ---------------------------------------------------------------- the run


def evaluate_fold(fold: Fold, untrained: str, args, weights: str, out: Path) -> None:
    labels = list(fold.models)
    fold.output = out / fold.song.name / "evaluate"
    also = [arg for label in labels[1:] for arg in ("--also", f"{label}={fold.models[label]}")]
    cycledrums("evaluate", f"{labels[0]}={fold.models[labels[0]]}", str(out / fold.song.name / "testset"),
               str(fold.output), *also, "--also", f"{UNTRAINED}={untrained}", "--baselines",
               "--inception-weights", weights, "--seed", str(args.seed), "--keep-audio",
               "--report-clips", str(args.report_clips),
               "--griffin-lim-iters", str(args.griffin_lim_iters), log=out / fold.song.name / "evaluate.log")


def cut_songs(songs: list[Song], out: Path, args, skipped: dict) -> list[Fold]:
    """Every song's clips, cut before any job runs; the folds with the 2 clips the baselines need."""
    folds = []
    for song in songs:
        fold = Fold(song)
        fold.clips, fold.windows = cut_clips(song, out / song.name / "testset", args.max_clips_per_song, args.seed)
        print(f"{song.name}: {fold.clips} clips of the {fold.windows} windows prepare keeps", flush=True)
        if fold.clips < 2:
            skipped[song.name] = f"{fold.clips} window(s) with bass and drums playing; the baselines need 2"
            print(f"skipping {song.name}: {skipped[song.name]}", flush=True)
        else:
            folds.append(fold)
    if not folds:
        raise BenchmarkError("no song had 2 clips to evaluate: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return folds


def run(args) -> dict:
    out = Path(args.out).resolve()
    models, per_song = parse_models(args.model, "--model", False), parse_models(args.per_song_model,
                                                                                 "--per-song-model", True)
    if not models and not per_song:
        raise BenchmarkError("give at least one model: --model NAME=RUN_DIR or --per-song-model NAME=TEMPLATE")
    songs, skipped = find_songs([Path(p).resolve() for p in args.stems_dirs], tuple(args.mix_in))
    for song, why in skipped.items():
        print(f"skipping {song}: {why}", flush=True)
    folds = cut_songs(songs, out, args, skipped)
    for fold in folds:
        fold.models = fold_models(fold.song.name, models, per_song)
    weights, weights_note = inception_weights(args.inception_weights, out)
    untrained = os.path.abspath(args.untrained) if args.untrained else None
    if untrained is None:
        print("making the untrained baseline (train --max-steps 1 --lr 0) ...", flush=True)
        untrained = make_untrained(next(iter(folds[0].models.values())), folds[0].song, out)
    tables, rests, parts = [], [], []
    for i, fold in enumerate(folds, 1):
        start = time.monotonic()
        print(f"[{i}/{len(folds)}] held out {fold.song.name}: evaluate on {fold.clips} clips ...", flush=True)
        evaluate_fold(fold, untrained, args, weights, out)
        tables.append(load_clips(fold.output))
        testset, labels = out / fold.song.name / "testset", list(models | per_song)
        clip_rests, clip_parts = clip_figures(tables[-1], testset, labels, args.seed)
        rests.append(clip_rests)
        parts.append(clip_parts)
        print(f"  done in {time.monotonic() - start:.0f} s: {fold.output}", flush=True)
    return summarize(folds, tables, rests, parts, skipped, models | per_song, untrained, weights_note)


def summarize(folds: list[Fold], tables: list, rests: list, parts: list, skipped: dict, models: dict,
              untrained: str, weights: str) -> dict:
    import pandas as pd

    labels = list(models)
    songs = {}
    for fold, table, rest, part in zip(folds, tables, rests, parts):
        songs[fold.song.name] = dict(judge(table, labels), windows=fold.windows, models=fold.models,
                                     evaluate_output=str(fold.output), rests=rest_summary(rest, labels),
                                     pattern_parts=parts_summary(part, labels))
    pooled_rests = {clip: figures for rest in rests for clip, figures in rest.items()}
    pooled_parts = {clip: figures for part in parts for clip, figures in part.items()}
    return {"models": models, "untrained": untrained, "inception": weights, "skipped": skipped,
            "songs": songs, "overall": dict(judge(pd.concat(tables, ignore_index=True), labels),
                                            rests=rest_summary(pooled_rests, labels),
                                            pattern_parts=parts_summary(pooled_parts, labels))}


def comma_list(text: str) -> list[str]:
    from pipelines.groove_options import comma_items

    items = comma_items(text)
    if not items or set(items) & set(STEM_NAMES):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of stem names other than bass and drums")
    return items


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stems_dirs", nargs="+", metavar="STEMS_DIR",
                    help="a folder of <song>/{bass,drums}.* folders, or one song folder (repeatable)")
    ap.add_argument("out", metavar="OUT", help="output folder (clips, evaluate outputs, real_songs.json/.md)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="a model used for every held-out song (repeatable)")
    ap.add_argument("--per-song-model", action="append", default=[], metavar="NAME=TEMPLATE",
                    help="a model per held-out song: TEMPLATE holds {song}, the run trained without it (repeatable)")
    ap.add_argument("--untrained", default=None, metavar="RUN_DIR",
                    help="the untrained baseline (default: made with train --max-steps 1 --lr 0)")
    ap.add_argument("--max-clips-per-song", type=int, default=0, metavar="N",
                    help="evaluate a seeded sample of N windows per song (default 0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the clip sample and of evaluate (default 0)")
    ap.add_argument("--inception-weights", default=None, metavar="PATH",
                    help="Inception-v3 weights (default: torchvision's cache, else a seeded random stand-in)")
    ap.add_argument("--mix-in", type=comma_list, default=[], metavar="STEMS",
                    help="stems summed with the bass into the model's input, e.g. other (the song without "
                         "its drums); the bass copy then copies that input (default: the bass alone)")
    ap.add_argument("--griffin-lim-iters", type=int, default=32, help="evaluate's Griffin-Lim iterations (32)")
    ap.add_argument("--report-clips", type=int, default=4, help="evaluate's report clips per set (default 4)")
    args = ap.parse_args(argv)
    if args.max_clips_per_song < 0:
        ap.error("--max-clips-per-song must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except BenchmarkError as err:
        print(f"real_songs: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"real_songs: failed: {err}", file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    text = report_text(results, list(results["models"]))
    (out / "real_songs.json").write_text(json.dumps(results, indent=2))
    (out / "real_songs.md").write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
