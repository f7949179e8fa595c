"""`cycledrums prepare` end to end on a local Ray: stems (synth data set), mixes (real songs through
a tiny Demucs), bad input, re-runs, and S3 (moto server).

The mixes test uses 13 s excerpts of two songs kept in tests/data (see its README):
"Vibe Ace" by Kevin MacLeod, CC BY 3.0, and "Let's Go Fishin'" by Karissa Hobbs, CC BY 3.0
(both via Free Music Archive).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from pipelines.audio import load_audio, read_audio
from pipelines.catalog import hash_split
from pipelines.mel import MelParams, audio_to_image, num_frames
from pipelines.windowing import cut_windows, window_starts
from pipelines.prepare import ERRORS_FILE, SUMMARY_FILE, PrepareConfig, run_prepare
from pipelines.prepare_stages import window_file_name
from pipelines.windows import binary_to_images, mel_params_from_schema, window_schema

DATA = Path(__file__).resolve().parent / "data"
PARAMS = MelParams()


# ----------------------------------------------------------------- helpers


def synth_tracks(root: Path) -> dict[str, str]:
    """{track id: split} of the synth data set, from its own metadata."""
    meta = json.loads((root / "synth.json").read_text())
    return {f"{t['split']}/{t['name']}": t["split"] for t in meta["tracks"]}


def reference_windows(bass: torch.Tensor, drums: torch.Tensor, stride: int | None = None):
    """The codec run directly: (bass windows, drums windows, start frames)."""
    n = min(bass.shape[-1], drums.shape[-1])
    images = audio_to_image(torch.stack([bass[:n], drums[:n]]), PARAMS)
    bass_w, starts = cut_windows(images[0], PARAMS, stride=stride)
    drums_w, _ = cut_windows(images[1], PARAMS, stride=stride)
    return bass_w.numpy(), drums_w.numpy(), starts


def assert_images_match(got: np.ndarray, want: np.ndarray) -> None:
    # Same code on the same audio; only float rounding between thread counts may flip a uint8 step.
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def read_errors(out: Path) -> list[dict]:
    with open(out / ERRORS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def track_file(out: Path, split: str, track_id: str) -> Path:
    return out / split / window_file_name(track_id)


def write_wav(path: Path, audio: np.ndarray, rate: int = 44100, fmt: str = "WAV") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, format=fmt)


# ----------------------------------------------------------------- stems: the synth data set


@pytest.fixture(scope="module")
def stems_out(ray_local, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "windows"
    summary = run_prepare(PrepareConfig(input=str(synth_data), output=str(out)))
    return out, summary


@pytest.mark.timeout(300)
def test_stems_rows_follow_the_window_arithmetic_and_match_the_codec(stems_out, synth_data):
    out, summary = stems_out
    tracks = synth_tracks(synth_data)
    assert summary["tracks_ok"] == len(tracks) and summary["tracks_failed"] == 0
    total = 0
    for track_id, split in tracks.items():
        bass = load_audio(synth_data / track_id / "bass.wav", PARAMS.sample_rate)
        drums = load_audio(synth_data / track_id / "drums.wav", PARAMS.sample_rate)
        starts = window_starts(num_frames(min(len(bass), len(drums)), PARAMS), PARAMS)
        table = pq.read_table(track_file(out, split, track_id))
        # Synth stems are never near silent: every full window is kept.
        assert table.num_rows == len(starts) > 0
        assert table.column("window").to_pylist() == list(range(len(starts)))
        assert table.column("start_frame").to_pylist() == starts
        want_bass, want_drums, _ = reference_windows(bass, drums)
        got_bass = binary_to_images(table.column("bass"), PARAMS)
        got_drums = binary_to_images(table.column("drums"), PARAMS)
        assert_images_match(got_bass, want_bass)
        assert_images_match(got_drums, want_drums)
        assert not np.array_equal(got_bass, got_drums)
        total += table.num_rows
    assert summary["windows_written"] == total and summary["windows_dropped"] == 0
    seconds = sum(sf.info(synth_data / t / "bass.wav").duration for t in tracks)
    assert summary["audio_hours"] == pytest.approx(seconds / 3600, rel=1e-3)


@pytest.mark.timeout(120)
def test_stems_output_is_plain_parquet_split_by_track_with_metadata(stems_out, synth_data, ray_local):
    out, summary = stems_out
    tracks = synth_tracks(synth_data)
    files = sorted(out.rglob("*.parquet"))
    assert len(files) == len(tracks)
    for path in files:
        schema = pq.read_schema(path)
        assert mel_params_from_schema(schema) == PARAMS
        assert schema.remove_metadata() == window_schema(PARAMS).remove_metadata()
        assert pa.types.is_fixed_size_binary(schema.field("bass").type)  # no Ray tensor type
    # The whole OUTPUT reads as one table with plain pyarrow (_errors/_summary are skipped).
    table = pq.read_table(out)
    assert table.num_rows == summary["windows_written"]
    by_track = {}
    for track_id, split in zip(table.column("track_id").to_pylist(), table.column("split").to_pylist()):
        by_track.setdefault(track_id, set()).add(split)
    assert by_track == {t: {s} for t, s in tracks.items()}  # one split per track, from its folder
    for split in ("train", "test"):
        assert summary["splits"][split]["tracks"] == sum(s == split for s in tracks.values())
    # Ray Data reads the same folder (training's way in), skipping _errors.csv / _summary.json.
    assert ray_local.data.read_parquet(str(out)).count() == summary["windows_written"]
    on_disk = json.loads((out / SUMMARY_FILE).read_text())
    assert on_disk["tracks_ok"] == summary["tracks_ok"] and on_disk["mel_params"] == PARAMS.to_dict()
    assert on_disk["audio_seconds_per_second"] > 0 and on_disk["wall_seconds"] > 0
    assert read_errors(out) == []


@pytest.mark.timeout(300)
def test_a_smaller_stride_cuts_more_overlapping_windows_of_the_same_audio(stems_out, synth_data, tmp_path):
    """--stride (issue #30): a few real songs give few windows; a smaller stride cuts time-shifted
    windows of the same audio, the same codec images, every `stride` frames."""
    default_out, default_summary = stems_out
    out = tmp_path / "strided"
    summary = run_prepare(PrepareConfig(input=str(synth_data), output=str(out), stride=64))
    assert summary["stride_frames"] == 64 and default_summary["stride_frames"] == PARAMS.stride_frames
    assert summary["windows_written"] > 2 * default_summary["windows_written"]
    for track_id, split in synth_tracks(synth_data).items():
        bass = load_audio(synth_data / track_id / "bass.wav", PARAMS.sample_rate)
        drums = load_audio(synth_data / track_id / "drums.wav", PARAMS.sample_rate)
        want_bass, want_drums, starts = reference_windows(bass, drums, stride=64)
        n_frames = num_frames(min(len(bass), len(drums)), PARAMS)
        assert starts == list(range(0, n_frames - PARAMS.window_frames + 1, 64))
        table = pq.read_table(track_file(out, split, track_id))
        assert table.column("start_frame").to_pylist() == starts
        assert_images_match(binary_to_images(table.column("bass"), PARAMS), want_bass)
        assert_images_match(binary_to_images(table.column("drums"), PARAMS), want_drums)
        # The first window is the default cut's first window, byte for byte.
        first = pq.read_table(track_file(default_out, split, track_id)).slice(0, 1)
        assert table.column("drums")[0] == first.column("drums")[0]
    with pytest.raises(ValueError, match="--stride must be 1 to 256"):
        run_prepare(PrepareConfig(input=str(synth_data), output=str(tmp_path / "x"), stride=300))


# ----------------------------------------------------------------- bad input and re-runs


@pytest.mark.timeout(300)
def test_bad_tracks_become_error_rows_and_reruns_skip_what_is_done(ray_local, synth_data, tmp_path):
    good = list(synth_tracks(synth_data))[:2]
    data = tmp_path / "in"
    for track_id in good:
        for stem in ("bass", "drums"):
            dest = data / track_id / f"{stem}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(synth_data / track_id / f"{stem}.wav", dest)
    drums, rate = sf.read(synth_data / good[0] / "drums.wav", dtype="float32")
    bass, _ = sf.read(synth_data / good[0] / "bass.wav", dtype="float32")
    (data / "train" / "corrupt").mkdir(parents=True)
    (data / "train" / "corrupt" / "bass.wav").write_bytes(b"RIFF" + os.urandom(4000))
    write_wav(data / "train" / "corrupt" / "drums.wav", drums)
    write_wav(data / "train" / "silent" / "bass.wav", bass)
    write_wav(data / "train" / "silent" / "drums.wav", np.zeros_like(drums))
    write_wav(data / "train" / "quiet" / "bass.wav", bass)
    write_wav(data / "train" / "quiet" / "drums.wav", drums * 1e-4)  # audible to soundfile, not to us
    write_wav(data / "train" / "short" / "bass.wav", bass[: 3 * rate])
    write_wav(data / "train" / "short" / "drums.wav", drums[: 3 * rate])
    write_wav(data / "train" / "nodrums" / "bass.wav", bass)
    (data / "test" / "empty").mkdir(parents=True)
    (data / "test" / "empty" / "bass.wav").write_bytes(b"")
    write_wav(data / "test" / "empty" / "drums.wav", drums)

    out = tmp_path / "out"
    summary = run_prepare(PrepareConfig(input=str(data), output=str(out)))
    assert (summary["tracks_ok"], summary["tracks_failed"]) == (2, 6)
    errors = {row["track"]: row for row in read_errors(out)}
    expected = {
        "train/corrupt": ("decode", "not a readable audio file"),
        "train/silent": ("decode", "silent"),
        "train/quiet": ("windows", "near silent"),
        "train/short": ("decode", "too short"),
        "train/nodrums": ("catalog", "no drums stem"),
        "test/empty": ("decode", "empty"),
    }
    assert set(errors) == set(expected)
    for track_id, (stage, words) in expected.items():
        assert errors[track_id]["stage"] == stage
        assert words in errors[track_id]["reason"], errors[track_id]
        assert errors[track_id]["path"].endswith(track_id)
    assert "bass.wav" in errors["train/corrupt"]["reason"]  # the reason names the bad file
    assert summary["windows_dropped"] > 0  # the quiet track's windows
    for track_id in good:
        assert pq.read_table(track_file(out, track_id.split("/")[0], track_id)).num_rows > 0
    assert sorted(p.name for p in out.rglob("*.parquet")) == sorted(window_file_name(t) for t in good)

    # Re-run through the CLI: done tracks are skipped, failed ones are tried again.
    from cycledrums_cli import main

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert main(["prepare", str(data), str(out), "--num-cpus", "1"]) == 0
    again = json.loads((out / SUMMARY_FILE).read_text())
    assert (again["tracks_skipped"], again["tracks_ok"], again["tracks_failed"]) == (2, 0, 6)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes
    assert len(read_errors(out)) == 6

    # --overwrite redoes the done tracks too.
    assert main(["prepare", str(data), str(out), "--overwrite"]) == 0
    redone = json.loads((out / SUMMARY_FILE).read_text())
    assert (redone["tracks_skipped"], redone["tracks_ok"], redone["tracks_failed"]) == (0, 2, 6)
    assert all(p.stat().st_mtime_ns != t for p, t in mtimes.items())


def test_user_errors_are_reported_by_the_cli(tmp_path, capsys):
    from cycledrums_cli import main

    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "songs").mkdir()
    (tmp_path / "songs" / "a.ogg").write_bytes(b"x")
    assert main(["prepare", str(tmp_path / "songs"), str(tmp_path / "out"),
                 "--demucs-model", str(tmp_path / "no-model")]) == 2
    assert "no such model" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "songs"), str(tmp_path / "out"), "--stride", "0"]) == 2
    assert "--stride must be 1 to 256 frames" in capsys.readouterr().err


def test_demucs_actors_are_sized_to_the_cluster(ray_local):
    from cluster.resources import ResourceRequest
    from pipelines.prepare import PrepareError, _cluster_plan

    cfg = PrepareConfig(input="in", output="out")
    assert _cluster_plan(cfg, "stems")[0]["actors"] is None
    actors = _cluster_plan(cfg, "mixes")[0]["actors"]  # the test Ray has 4 CPUs and no GPU
    # one CPU Demucs actor using 3 CPUs as torch threads; one CPU left for decode / windows
    assert (actors.device, actors.size, actors.num_cpus, actors.torch_threads) == ("cpu", 1, 3.0, 3)
    with pytest.raises(PrepareError, match="capped at 1"):
        _cluster_plan(PrepareConfig(input="in", output="out", num_cpus=1), "mixes")
    with pytest.raises(PrepareError, match="needs 5 CPU; the cluster has 4 CPUs"):
        _cluster_plan(PrepareConfig(input="in", output="out", resources=ResourceRequest(actors=(4, 4))), "mixes")


def test_the_stems_pipeline_keeps_a_bounded_number_of_tasks_in_flight(ray_local):
    """Eight tasks per CPU the job may use, never one per track: a task per track submitted at
    once held every track's block in the driver (its memory grew with the catalog)."""
    from pipelines.prepare import TASKS_PER_CPU, stems_task_pool

    cfg = PrepareConfig(input="in", output="out")
    assert stems_task_pool(cfg, 10_000).size == TASKS_PER_CPU * 4  # the test Ray has 4 CPUs
    assert stems_task_pool(PrepareConfig(input="in", output="out", num_cpus=2), 10_000).size == TASKS_PER_CPU * 2
    assert stems_task_pool(cfg, 5).size == 5


def test_separators_is_an_old_name_of_actors(capsys):
    from cycledrums_cli import build_parser

    args = build_parser().parse_args(["prepare", "in", "out", "--separators", "2"])
    assert args.actors == (2, 2) and "--actors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "in", "out", "--separators", "0"])


def test_stems_with_device_cuda_say_that_no_model_runs(ray_local, caplog):
    """#31 item 11: --device cuda on stems (no model to place) says so in one line, not silently CPU."""
    import logging

    from cluster.resources import ResourceRequest
    from pipelines.prepare import _cluster_plan

    with caplog.at_level(logging.WARNING, logger="pipelines.prepare"):
        _cluster_plan(PrepareConfig(input="in", output="out"), "stems")
        assert not caplog.records
        _cluster_plan(PrepareConfig(input="in", output="out", resources=ResourceRequest(device="cuda")), "stems")
    [record] = caplog.records
    assert "--device cuda: ignored for the stems layout, which runs no model" in record.getMessage()


# ----------------------------------------------------------------- mixes: real songs, tiny Demucs


def excerpt(file_name: str) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(DATA / file_name, dtype="float32")
    return audio, rate


@pytest.mark.timeout(300)
def test_mixes_are_separated_filtered_and_split_by_hash(ray_local, tmp_path):
    from pipelines.separation import load_model, save_local_model, separate, tiny_model
    from pipelines.windows import track_windows

    vibe, rate = excerpt("vibe_ace_13s.ogg")
    fishin, rate2 = excerpt("lets_go_fishin_13s.ogg")
    songs = tmp_path / "fma"
    write_wav(songs / "000" / "000002.ogg", vibe, rate, "OGG")
    write_wav(songs / "000" / "000003.wav", fishin, rate2)
    write_wav(songs / "000" / "000004.ogg", vibe, rate, "OGG")  # live album: filtered out
    (songs / "001").mkdir()
    (songs / "001" / "001005.mp3").write_bytes(b"ID3" + os.urandom(3000))  # corrupt
    with open(songs / "tracks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "album", "track"])
        w.writerow(["", "title", "genre_top"])
        w.writerow(["track_id", "", ""])
        w.writerows([[2, "Vibes", "Pop"], [3, "Fishing", "Soul-RnB"],
                     [4, "Live in Paris", "Pop"], [1005, "Noise", "Pop"], [6, "Other", "Rock"]])
    model_dir = tmp_path / "model"
    save_local_model(tiny_model(seed=1), model_dir, "tiny")

    out = tmp_path / "out"
    # A random model's estimates are quiet: keep every window so the rows can be compared.
    min_level = -45.0
    summary = run_prepare(PrepareConfig(input=str(songs), output=str(out), genres=["pop", "soul-rnb"],
                                        test_fraction=0.5, demucs_model=str(model_dir),
                                        min_level_db=min_level))
    assert summary["layout"] == "mixes"
    assert (summary["tracks_ok"], summary["tracks_failed"], summary["tracks_filtered"]) == (2, 1, 1)
    (error,) = read_errors(out)
    assert error["track"] == "001/001005" and error["stage"] == "decode"

    model = load_model(str(model_dir))
    for track_id, ext in (("000/000002", "ogg"), ("000/000003", "wav")):
        split = hash_split(track_id, 0.5)
        table = pq.read_table(track_file(out, split, track_id))
        assert set(table.column("split").to_pylist()) == {split}
        samples, sr = read_audio(songs / f"{track_id}.{ext}")
        stems = separate(model, torch.from_numpy(samples.T.copy()), sr, PARAMS.sample_rate)
        n = min(len(stems["bass"]), len(stems["drums"]))
        assert table.num_rows == len(window_starts(num_frames(n, PARAMS), PARAMS)) == 2
        want, dropped = track_windows(track_id, split, stems["bass"], stems["drums"], PARAMS, min_level)
        assert dropped == 0
        for column in ("bass", "drums"):
            assert_images_match(binary_to_images(table.column(column), PARAMS),
                                binary_to_images(want.column(column), PARAMS))
        assert mel_params_from_schema(table.schema) == PARAMS


# ----------------------------------------------------------------- S3 (moto server)


@pytest.mark.timeout(300)
def test_s3_in_and_out(stems_out, synth_data, s3_endpoint, s3_bucket):
    import boto3

    from pipelines.storage import arrow_filesystem

    tracks = synth_tracks(synth_data)
    chosen = [next(t for t, s in tracks.items() if s == "train"),
              next(t for t, s in tracks.items() if s == "test")]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for track_id in chosen:
        for stem in ("bass", "drums"):
            s3.upload_file(str(synth_data / track_id / f"{stem}.wav"), s3_bucket,
                           f"in/{track_id}/{stem}.wav")
    s3.put_object(Bucket=s3_bucket, Key="in/train/broken/bass.wav", Body=b"not audio at all")
    s3.upload_file(str(synth_data / chosen[0] / "drums.wav"), s3_bucket, "in/train/broken/drums.wav")

    from cycledrums_cli import main

    src, dst = f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out"
    assert main(["prepare", src, dst, "--s3-endpoint-url", s3_endpoint]) == 0

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"]}
    want_keys = {f"out/{t.split('/')[0]}/{window_file_name(t)}" for t in chosen}
    assert keys == want_keys | {f"out/{SUMMARY_FILE}", f"out/{ERRORS_FILE}"}
    summary = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"out/{SUMMARY_FILE}")["Body"].read())
    assert (summary["tracks_ok"], summary["tracks_failed"]) == (2, 1)
    errors = list(csv.DictReader(io.StringIO(
        s3.get_object(Bucket=s3_bucket, Key=f"out/{ERRORS_FILE}")["Body"].read().decode())))
    assert [(e["track"], e["stage"]) for e in errors] == [("train/broken", "decode")]
    assert errors[0]["path"] == f"s3://{s3_bucket}/in/train/broken"

    # pyarrow's own S3 filesystem reads the same windows the local run wrote.
    fs, path = arrow_filesystem(dst, s3_endpoint)
    local_out, _ = stems_out
    for track_id in chosen:
        split = track_id.split("/")[0]
        remote = pq.read_table(f"{path}/{split}/{window_file_name(track_id)}", filesystem=fs)
        local = pq.read_table(track_file(local_out, split, track_id))
        assert mel_params_from_schema(remote.schema) == PARAMS
        assert remote.num_rows == local.num_rows > 0
        assert_images_match(binary_to_images(remote.column("drums"), PARAMS),
                            binary_to_images(local.column("drums"), PARAMS))
    assert pq.read_table(path, filesystem=fs).num_rows == summary["windows_written"]

    # A re-run against S3 skips both done tracks.
    assert main(["prepare", src, dst, "--s3-endpoint-url", s3_endpoint]) == 0
    again = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"out/{SUMMARY_FILE}")["Body"].read())
    assert (again["tracks_skipped"], again["tracks_ok"], again["tracks_failed"]) == (2, 0, 1)
