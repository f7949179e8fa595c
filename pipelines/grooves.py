"""`cycledrums grooves`: the Groove MIDI Dataset -> a multitrack corpus of human-played drums.

The Groove MIDI Dataset (Gillick, Roberts, Engel, Eck, Bamman; Magenta; CC BY 4.0) holds
1,150 drum performances by 10 drummers, with `info.csv` (drummer, session, style, bpm,
beat/fill, time signature, duration, split).  For each selected performance, one Ray Data
task writes, in the musdb18-HQ layout that `cycledrums prepare` reads:

    OUT/<split>/<track>/drums.wav     the performance rendered with a General MIDI SoundFont
    OUT/<split>/<track>/bass.wav      a bass part composed on its kicks (pipelines/groove_bass.py)
    OUT/<split>/<track>/mixture.wav   bass + drums  (44.1 kHz stereo 16-bit, all three)
    OUT/grooves.json                  style, bpm, drummer, split, key, ... per track: every
                                      track folder in OUT (a re-run with another selection adds
                                      to the earlier tracks; `selection` is the latest run's)
    OUT/_errors.csv                   track, path, stage, reason (unreadable / empty MIDI)

Selection (deterministic): long "beat" takes (no fills) of at least `min_seconds`, the
chosen styles and dataset splits; `max_tracks` draws a seeded sample that keeps the
train/test proportions.  The dataset's split is kept, with its validation set written
as `test` (prepare knows train and test only; held-out data is what evaluation needs).
Each track's bass is seeded by (seed, track name), so a track sounds the same whatever
else is selected.  Same inputs and seed -> the same bytes.
The variety options (several kits, bass programs, held notes, rests, processing; issue #30)
are declared in groove_options.py and applied per take by groove_render.py.
"""
from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import logging
import posixpath
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from cluster.errors import UserError
from pipelines.groove_options import GrooveVariety
from pipelines.storage import fsspec_filesystem, is_local_filesystem, read_bytes, write_bytes_atomic

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
INFO_FILE = "info.csv"
META_FILE = "grooves.json"
ERRORS_FILE = "_errors.csv"
ERROR_COLUMNS = ("track", "path", "stage", "reason")
DATASET_SPLITS = ("train", "validation", "test")
OUTPUT_SPLIT = {"train": "train", "validation": "test", "test": "test"}
# Groove MIDI renders quietly (a funk take: -34 dBFS RMS); the drums are brought to this level,
# unless their peaks (drum crest factors reach 22 dB) must stay under DRUMS_PEAK
# (the bass, 2 dB lower, likewise under what the drums leave).
DRUMS_RMS_DB = -26.0
DRUMS_PEAK = 0.6
BASS_VS_DRUMS_DB = -2.0


class GroovesError(UserError):
    """A user error in the inputs or options (reported without a traceback)."""


@dataclass
class GroovesConfig(GrooveVariety):  # the variety options (kits, bass, processing): groove_options.py
    groove_dir: str
    out: str
    max_tracks: int | None = None
    styles: list[str] | None = None  # top-level styles (rock, funk, ...); None: all
    splits: list[str] = field(default_factory=lambda: list(DATASET_SPLITS))
    seed: int = 0
    min_seconds: float = 8.0
    max_seconds: float | None = None  # keep only the first this many seconds of each take
    include_fills: bool = False
    s3_endpoint_url: str | None = None
    address: str | None = None


# ----------------------------------------------------------------- selection


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def track_name(midi_filename: str) -> str:
    """drummer1/eval_session/1_funk-groove1_138_beat_4-4.mid -> drummer1-eval_session-1_funk-..."""
    stem = midi_filename[:-4] if midi_filename.lower().endswith(".mid") else midi_filename
    return stem.replace("/", "-")


def read_info(groove_dir: str, s3_endpoint_url: str | None = None) -> list[dict]:
    try:
        text = read_bytes(_join(groove_dir, INFO_FILE), s3_endpoint_url).decode("utf-8")
    except FileNotFoundError as err:
        raise GroovesError(f"{groove_dir} is not a Groove MIDI folder: {err}") from err
    rows = list(csv.DictReader(io.StringIO(text)))
    needed = {"drummer", "session", "style", "bpm", "beat_type", "time_signature",
              "midi_filename", "duration", "split"}
    missing = needed - set(rows[0] if rows else needed)
    if not rows or missing:
        raise GroovesError(f"{INFO_FILE} in {groove_dir} has no rows or lacks columns {sorted(missing)}")
    return rows


def _check_choice(kind: str, chosen: list[str] | None, known: set[str]) -> None:
    unknown = sorted(set(chosen or ()) - known)
    if unknown:
        raise GroovesError(f"unknown {kind} {', '.join(unknown)}; the data set has: {', '.join(sorted(known))}")


def select(rows: list[dict], cfg: GroovesConfig) -> list[dict]:
    """The performances to render, as job rows (sorted by track name)."""
    top_styles = {r["style"].split("/")[0] for r in rows}
    _check_choice("style(s)", cfg.styles, top_styles)
    _check_choice("split(s)", cfg.splits, set(DATASET_SPLITS))
    if cfg.max_tracks is not None and cfg.max_tracks < 1:
        raise GroovesError(f"--max-tracks must be at least 1, got {cfg.max_tracks}")
    if cfg.max_seconds is not None and cfg.max_seconds < 1:
        raise GroovesError(f"--max-seconds must be at least 1, got {cfg.max_seconds}")
    picked = []
    for r in rows:
        if not cfg.include_fills and r["beat_type"] != "beat":
            continue
        if float(r["duration"] or 0) < cfg.min_seconds:
            continue
        if cfg.styles and r["style"].split("/")[0] not in cfg.styles:
            continue
        if r["split"] not in cfg.splits:
            continue
        picked.append(dict(_job_row(r, cfg.seed), max_seconds=cfg.max_seconds))
    picked.sort(key=lambda j: j["track"])
    if cfg.max_tracks is not None and cfg.max_tracks < len(picked):
        picked = _sample(picked, cfg.max_tracks, cfg.seed)
    return picked


def _sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded sample of n rows keeping the train/test proportions (>= 1 test when n >= 2)."""
    rng = np.random.default_rng(seed)
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    for split_rows in by_split.values():
        order = rng.permutation(len(split_rows))
        split_rows[:] = [split_rows[i] for i in order]
    n_test = round(n * len(by_split["test"]) / len(rows))
    if n >= 2 and by_split["test"] and by_split["train"]:
        n_test = min(max(1, n_test), n - 1)
    n_test = min(n_test, len(by_split["test"]))
    chosen = by_split["test"][:n_test] + by_split["train"][: n - n_test]
    return sorted(chosen, key=lambda j: j["track"])


def _track_seed(seed: int, track: str) -> int:
    digest = hashlib.sha256(f"{seed}:{track}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _bar_beats(time_signature: str) -> float:
    """Quarter notes per bar: 4-4 -> 4, 6-8 -> 3, 5-4 -> 5."""
    try:
        num, den = (int(x) for x in time_signature.split("-"))
        return num * 4.0 / den
    except (ValueError, ZeroDivisionError):
        return 4.0


def _job_row(r: dict, seed: int) -> dict:
    name = track_name(r["midi_filename"])
    return {"track": name, "split": OUTPUT_SPLIT[r["split"]], "dataset_split": r["split"],
            "midi": r["midi_filename"], "style": r["style"], "bpm": float(r["bpm"]),
            "drummer": r["drummer"], "session": r["session"],
            "time_signature": r["time_signature"], "bar_beats": _bar_beats(r["time_signature"]),
            "seed": _track_seed(seed, name)}


# ----------------------------------------------------------------- one performance


class MidiError(ValueError):
    """The MIDI file cannot be read or holds no drum notes."""


def read_drums(data: bytes, path: str):
    """MIDI bytes -> (drum notes, tempo in bpm or None, end time in seconds)."""
    import pretty_midi

    if not data:
        raise MidiError(f"{path}: file is empty (0 bytes)")
    try:
        pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as err:  # mido / pretty_midi raise many types for bad bytes
        raise MidiError(f"{path}: not a readable MIDI file ({type(err).__name__}: {err})") from err
    notes = [n for inst in pm.instruments if inst.is_drum for n in inst.notes]
    if not notes:
        raise MidiError(f"{path}: no drum notes (channel 10) in the file")
    tempi = pm.get_tempo_changes()[1]
    return notes, (float(tempi[0]) if len(tempi) else None), float(pm.get_end_time())


def _hits(notes) -> tuple[dict[str, list[float]], dict[float, int]]:
    from pipelines.groove_bass import CYMBAL_TIME, KICKS, MERGE_SECONDS, ROLAND_TO_GM, SNARES, merged_times

    hits = {"kick": [], "snare": [], "cymbal": []}
    velocity: dict[float, int] = {}
    for n in notes:
        pitch = ROLAND_TO_GM.get(n.pitch, n.pitch)
        kind = "kick" if pitch in KICKS else "snare" if pitch in SNARES else \
            "cymbal" if pitch in CYMBAL_TIME else None
        if kind:
            hits[kind].append(n.start)
    kicks = sorted((n.start, n.velocity) for n in notes if n.pitch in KICKS)
    starts = [s for s, _ in kicks]
    for t in merged_times(hits["kick"]):
        # a merged kick is as loud as its loudest hit
        first, last = bisect.bisect_left(starts, t), bisect.bisect_left(starts, t + MERGE_SECONDS)
        velocity[t] = max(v for _, v in kicks[first:last])
    return hits, velocity


def _rms(x: np.ndarray) -> float:
    # float32 with numpy's pairwise summation: accurate to ~1e-6 here, and no float64 copy
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _level(x: np.ndarray, rms_db: float, peak: float) -> np.ndarray:
    """x (float32, scaled in place) at rms_db dBFS RMS, or lower if its peak would pass `peak`."""
    x_peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
    x *= np.float32(min(10 ** (rms_db / 20) / max(_rms(x), 1e-9), peak / max(x_peak, 1e-9)))
    return x


def mix_levels(drums: np.ndarray, bass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each stem to its own loudness, by its own gain (so the drums never depend on the bass
    part), with peaks capped so that their sum cannot clip."""
    return (_level(drums, DRUMS_RMS_DB, DRUMS_PEAK),
            _level(bass, DRUMS_RMS_DB + BASS_VS_DRUMS_DB, 0.98 - DRUMS_PEAK))


def render_performance(data: bytes, job: dict, soundfont_path: str | list[str] | None = None,
                       realism: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """MIDI bytes + job row -> ({drums, bass, mixture}: float32 [2, n] at 44.1 kHz, metadata).
    `soundfont_path`: the kit, or kits to draw it from; `realism`: groove_options.realism_of."""
    from pipelines.groove_bass import compose_bass
    from pipelines.groove_render import render_stems

    notes, tempo, end = read_drums(data, job["midi"])
    if job.get("max_seconds"):
        end = min(end, job["max_seconds"])
        notes = [n for n in notes if n.start < end]
    bpm = tempo or job["bpm"]
    num_samples = int(round(end * SAMPLE_RATE))
    hits, kick_velocity = _hits(notes)
    part = compose_bass(hits, kick_velocity, job["style"], bpm, job["bar_beats"], end, job["seed"])
    drums, bass, varied = render_stems(notes, part, job, bpm, end, num_samples, soundfont_path, realism or {})
    if _rms(bass) == 0.0:
        raise MidiError(f"{job['midi']}: no kick drum to lock a bass part to")
    drums, bass = mix_levels(drums, bass)
    meta = {"seconds": num_samples / SAMPLE_RATE, "midi_bpm": bpm, "key": part.key,
            "progression": list(part.progression), "bars_per_chord": part.bars_per_chord,
            "drum_notes": len(notes), **varied}
    return {"drums": drums, "bass": bass, "mixture": drums + bass}, meta


def _wav_bytes(stereo: np.ndarray) -> bytes:
    """float32 [2, n] -> 16-bit stereo WAV bytes (interleaved here, not by soundfile: 3x faster)."""
    import soundfile as sf

    pcm = np.empty((stereo.shape[1], 2), dtype=np.int16)
    for channel in range(2):
        scaled = np.clip(stereo[channel] * np.float32(32767), -32767, 32767)
        pcm[:, channel] = np.rint(scaled, out=scaled)
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def render_track(job: dict, groove_dir: str, out: str, soundfont_path: str | list[str] | None = None,
                 s3_endpoint_url: str | None = None, realism: dict | None = None) -> dict:
    """One performance end to end: read, render, write its folder.  Never raises for bad input:
    the returned row says ok / failed with the stage and reason.  `soundfont_path` None: the
    SoundFont pretty_midi ships, found on the machine that runs the task."""
    row = dict(job, status="ok", stage="", reason="", seconds=0.0, cpu_seconds=0.0)
    stage = "read"
    cpu_started = time.process_time()
    try:
        data = read_bytes(_join(groove_dir, job["midi"]), s3_endpoint_url)
        stage = "render"
        stems, meta = render_performance(data, job, soundfont_path, realism)
        stage = "write"
        fs, root = fsspec_filesystem(out, s3_endpoint_url)
        folder = posixpath.join(root, job["split"], job["track"])
        for name in ("bass", "drums", "mixture"):
            write_bytes_atomic(fs, posixpath.join(folder, f"{name}.wav"), _wav_bytes(stems[name]))
        row.update(meta)
    except (MidiError, FileNotFoundError) as err:
        row.update(status="failed", stage=stage, reason=str(err))
    except Exception as err:  # anything else: still a row, with the type, and logged
        log.warning("%s failed in %s", job["track"], stage, exc_info=err)
        row.update(status="failed", stage=stage, reason=f"{type(err).__name__}: {err}")
    row["cpu_seconds"] = time.process_time() - cpu_started  # this task's CPU time (benchmarks)
    return row


# ----------------------------------------------------------------- the job


def _run_on_ray(jobs: list[dict], cfg: GroovesConfig, soundfont: list[str] | None, realism: dict):
    """Yield result rows as Ray Data finishes them (one task per performance)."""
    import ray
    from ray.data import DataContext

    from cluster.ray_runtime import init_ray

    init_ray(cfg.address)
    ctx = DataContext.get_current()
    saved = (ctx.max_errored_blocks, ctx.op_resource_reservation_enabled)
    # render_track turns bad input into rows; a block that still fails (a worker killed)
    # must not end the job: its track is reported as lost below.
    ctx.max_errored_blocks = -1
    ctx.op_resource_reservation_enabled = False  # one operator: let it use every CPU
    args = {"groove_dir": cfg.groove_dir, "out": cfg.out, "soundfont_path": soundfont,
            "s3_endpoint_url": cfg.s3_endpoint_url, "realism": realism}
    try:
        ds = ray.data.from_items(jobs, override_num_blocks=len(jobs))
        ds = ds.map(lambda job: render_track(job, **args), num_cpus=1)
        for row in ds.iter_rows():
            yield dict(row)
    finally:
        ctx.max_errored_blocks, ctx.op_resource_reservation_enabled = saved


def _errors_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(ERROR_COLUMNS)
    for r in rows:
        if r["status"] != "ok":
            writer.writerow([r["track"], r["midi"], r["stage"], r["reason"]])
    return buf.getvalue().encode("utf-8")


META_KEYS = ("track", "split", "dataset_split", "style", "bpm", "midi_bpm", "drummer", "session",
             "time_signature", "seconds", "midi", "bass_program", "key", "progression",
             "bars_per_chord", "bass_notes", "drum_notes", "soundfont", "bass_soundfont", "bass_held",
             "bass_rests", "processing")


def _metadata(cfg: GroovesConfig, tracks: list[dict], soundfonts: list[str]) -> bytes:
    """grooves.json: `selection` is the latest run's; `tracks` every track in OUT (_tracks_present)."""
    from pipelines.groove_options import realism_of

    meta = {"source": "Groove MIDI Dataset (Gillick, Roberts, Engel, Eck, Bamman; Magenta), CC BY 4.0",
            "sample_rate": SAMPLE_RATE, "soundfonts": [posixpath.basename(p) for p in soundfonts],
            "selection": {k: v for k, v in asdict(cfg).items()
                          if k not in ("groove_dir", "out", "s3_endpoint_url", "address", "soundfont")}
            | {"bass_programs": realism_of(cfg)["bass_programs"] or None},
            "validation_split_written_as": OUTPUT_SPLIT["validation"],
            "tracks": tracks}
    return json.dumps(meta, indent=2).encode("utf-8")


def _tracks_present(fs, root: str, ok: list[dict]) -> list[dict]:
    """What OUT/grooves.json lists: this run's tracks, and every track an earlier run wrote
    into OUT whose folder still holds its three stems (its entry from the earlier
    grooves.json), so a re-run with another selection adds to the list instead of hiding
    the folders it did not render.  Sorted by track name."""
    tracks = {r["track"]: {k: r[k] for k in META_KEYS} for r in ok}
    path = posixpath.join(root, META_FILE)
    earlier = []
    if fs.exists(path):
        try:
            earlier = json.loads(fs.cat_file(path)).get("tracks", [])
        except (ValueError, AttributeError) as err:
            log.warning("%s is unreadable (%s); it is rewritten with this run's tracks", path, err)
    for entry in earlier:
        name, split = entry.get("track"), entry.get("split")
        if not name or name in tracks or split not in ("train", "test"):
            continue
        folder = posixpath.join(root, split, name)
        if all(fs.exists(posixpath.join(folder, f"{stem}.wav")) for stem in ("bass", "drums", "mixture")):
            tracks[name] = entry
    return [tracks[name] for name in sorted(tracks)]


def run_grooves(cfg: GroovesConfig, in_process: bool = False) -> dict:
    """Select, render (Ray Data, or in this process), write metadata; returns a summary."""
    from pipelines.paths import check_output_outside_inputs
    from pipelines.groove_kits import kit_problem, soundfont_paths
    from pipelines.groove_options import realism_of, variety_problem
    from pipelines.soundbank import default_soundfont_path

    started = time.perf_counter()
    given = soundfont_paths(cfg.soundfont)
    check_output_outside_inputs(cfg.out, {"GROOVE_DIR": cfg.groove_dir, "--soundfont": given}, what="OUT")
    # once here, not once per take in the tasks
    kits = given or [default_soundfont_path()]
    problem = variety_problem(cfg) or next(filter(None, map(kit_problem, kits)), None)
    if problem:
        raise GroovesError(problem)
    if len(set(given)) < len(given):
        raise GroovesError(f"--soundfont names a file twice: {', '.join(given)}")
    # Tasks look the default up on their own machine (a worker's pretty_midi may live elsewhere).
    task_soundfont, realism = given or None, realism_of(cfg)
    jobs = select(read_info(cfg.groove_dir, cfg.s3_endpoint_url), cfg)
    if not jobs:
        raise GroovesError("no performance matches the selection (styles, splits, --min-seconds)")
    out_fs, out_root = fsspec_filesystem(cfg.out, cfg.s3_endpoint_url)
    if out_fs.isfile(out_root):
        raise GroovesError(f"OUT {cfg.out} is an existing file; give a folder")
    if is_local_filesystem(out_fs):
        try:
            out_fs.makedirs(out_root, exist_ok=True)
        except OSError as err:
            raise GroovesError(f"cannot create OUT {cfg.out}: {err.strerror or err}") from err
    log.info("rendering %d performances from %s to %s", len(jobs), cfg.groove_dir, cfg.out)
    if in_process:
        stream = (render_track(j, cfg.groove_dir, cfg.out, task_soundfont, cfg.s3_endpoint_url, realism)
                  for j in jobs)
    else:
        stream = _run_on_ray(jobs, cfg, task_soundfont, realism)
    results = []
    for row in stream:
        results.append(row)
        status = f"{row['seconds']:.1f} s" if row["status"] == "ok" else f"FAILED ({row['reason']})"
        log.info("[%d/%d] %s: %s", len(results), len(jobs), row["track"], status)
    done = {r["track"] for r in results}
    for job in jobs:
        if job["track"] not in done:
            results.append(dict(job, status="failed", stage="pipeline", seconds=0.0, cpu_seconds=0.0,
                                reason="the Ray task for this track failed (worker lost?)"))
    results.sort(key=lambda r: r["track"])
    ok = [r for r in results if r["status"] == "ok"]
    write_bytes_atomic(out_fs, posixpath.join(out_root, ERRORS_FILE), _errors_csv(results))
    listed = _tracks_present(out_fs, out_root, ok)
    if listed:
        write_bytes_atomic(out_fs, posixpath.join(out_root, META_FILE), _metadata(cfg, listed, kits))
    wall = time.perf_counter() - started
    audio = sum(r["seconds"] for r in ok)
    return {"tracks_ok": len(ok), "tracks_failed": len(results) - len(ok), "tracks_listed": len(listed),
            "train": sum(r["split"] == "train" for r in ok), "test": sum(r["split"] == "test" for r in ok),
            "audio_seconds": audio, "wall_seconds": wall,
            "task_cpu_seconds": sum(r["cpu_seconds"] for r in results),
            "realtime_factor": audio / wall if wall > 0 else 0.0, "out": cfg.out}


def format_summary(s: dict) -> str:
    return (f"wrote {s['tracks_ok']} tracks ({s['train']} train, {s['test']} test; "
            f"{s['audio_seconds'] / 60:.1f} min of audio) to {s['out']} in {s['wall_seconds']:.1f} s "
            f"= {s['realtime_factor']:.0f}x real time; {s['tracks_failed']} failed "
            f"(see {ERRORS_FILE})")
