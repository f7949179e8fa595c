"""`cycledrums generate`: any-length bass in, drums.wav + mix.wav + mel PNG + manifest out."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from pipelines.mel import MelParams

DATA = Path(__file__).parent / "data"
PARAMS = MelParams()


def write_tiny_checkpoint(folder: Path, model: str = "cyclegan", seed: int = 0) -> Path:
    """A freshly initialised small checkpoint in the real format (train.checkpoint)."""
    from train.checkpoint import write_checkpoint
    from train.config import TrainConfig
    from train.models import build_networks

    torch.manual_seed(seed)
    config = TrainConfig(model=model, ngf=8, ndf=8, n_blocks=2).to_dict()
    config["mel_params"] = PARAMS.to_dict()
    nets = build_networks(config)
    write_checkpoint(str(folder), {k: v.state_dict() for k, v in nets.items()}, {"step": 0}, config,
                     step=0, epoch=0)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000000"))


def _song_bass(seconds: float, rate: int = 44100) -> np.ndarray:
    """[n, 2] stereo bass line of a procedural song."""
    from pipelines.synth import SongPlan, render_song

    plan = SongPlan(name="song", split="test", bpm=118.0, root_midi=33, seed=7)
    bass = render_song(plan, seconds, rate=rate)["bass"]
    bass = 0.8 * bass / np.abs(bass).max()
    return np.stack([bass, 0.9 * bass], axis=1).astype(np.float32)


def _drone(seconds: float, rate: int = 44100) -> np.ndarray:
    """A steady bass drone (55 Hz sawtooth): every window sees the same input, so any level
    change in the generated drums at the window seams comes from the stitching."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * (2 * ((55.0 * t) % 1.0) - 1) + 0.01 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bass")
    sf.write(folder / "song20.wav", _song_bass(20.0), 44100, subtype="PCM_16")
    sf.write(folder / "drone.wav", _drone(20.0), 44100, subtype="PCM_16")
    (folder / "lithium.flac").write_bytes((DATA / "lithium_bass_8s.flac").read_bytes())
    sf.write(folder / "silent.wav", np.zeros((3 * 44100, 2), np.float32), 44100, subtype="PCM_16")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt this is not audio")
    (folder / "notes.txt").write_text("not audio, not a clip")
    return folder


def _envelope_db(x: np.ndarray, block: int) -> np.ndarray:
    n = len(x) // block * block
    rms = np.sqrt((x[:n].reshape(-1, block) ** 2).mean(axis=1))
    return 20 * np.log10(rms + 1e-9)


# ---------------------------------------------------------------- stitching, without Ray


def test_crossfaded_stitch_has_no_level_jump_where_a_hard_cut_would():
    """Windows that disagree by 25 dB: the stitched audio's envelope ramps instead of stepping."""
    from pipelines.mel import dequantize, quantize
    from pipelines.windowing import stitch_windows, window_starts
    from infer.render import invert_images

    n_frames = 4 * PARAMS.stride_frames + 100
    starts = window_starts(n_frames, PARAMS, pad_tail=True)
    rng = np.random.default_rng(0)
    levels = [140 if i % 2 == 0 else 200 for i in range(len(starts))]  # uint8 steps: ~25 dB apart
    windows = torch.stack([torch.full((PARAMS.n_mels, PARAMS.window_frames), lv, dtype=torch.uint8)
                           + torch.from_numpy(rng.integers(0, 3, (PARAMS.n_mels, PARAMS.window_frames))
                                              .astype(np.uint8)) for lv in levels])
    stitched = quantize(stitch_windows(dequantize(windows, PARAMS), starts, n_frames, PARAMS.overlap_frames),
                        PARAMS)
    hard = torch.cat([windows[i][:, : PARAMS.stride_frames] for i in range(len(starts))], dim=1)[:, :n_frames]
    samples = (n_frames - 1) * PARAMS.hop_length
    smooth_audio, hard_audio = invert_images([stitched, hard], [samples, samples], PARAMS, n_iter=8)
    block = 4 * PARAMS.hop_length  # ~93 ms
    smooth_steps = np.abs(np.diff(_envelope_db(smooth_audio.numpy(), block)))
    hard_steps = np.abs(np.diff(_envelope_db(hard_audio.numpy(), block)))
    assert hard_steps.max() > 15.0          # the test can see a seam ...
    # ... and the cross-fade spreads the 25 dB over the 50-frame (~1.2 s) overlap.  Power
    # cross-fades rise fastest at the start of the overlap, so allow 40% of the step per block.
    assert smooth_steps.max() < 0.4 * hard_steps.max()
    # Inside the overlaps the level moves monotonically between the two windows' levels.
    column_db = dequantize(stitched, PARAMS).mean(dim=0).numpy()
    seam = slice(starts[1], starts[0] + PARAMS.window_frames)
    assert np.all(np.diff(column_db[seam]) > -0.3)


def _bass_image(n_frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (PARAMS.n_mels, n_frames), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_variation_noise_depends_on_seed_clip_and_window_only(checkpoint):
    from infer.generate_actor import GeneratorActor

    image = _bass_image(2 * PARAMS.stride_frames + 100)  # three windows, the last a padded tail

    def drums(actor):
        return actor.generate_images([image], ["clip"]).images[0]

    outs_off = [drums(GeneratorActor(checkpoint, "cpu", 2, 0.0, seed)) for seed in (1, 2)]
    outs_on = [drums(GeneratorActor(checkpoint, "cpu", 2, 0.2, seed)) for seed in (1, 1, 2)]
    assert torch.equal(outs_off[0], outs_off[1])
    assert torch.equal(outs_on[0], outs_on[1])            # same seed: same drums
    assert not torch.equal(outs_on[0], outs_on[2])        # other seed: other drums
    assert not torch.equal(outs_on[0], outs_off[0])
    # Batching does not change the noise: the clip's windows in other batches, behind another
    # clip's, get what they got alone.
    other = GeneratorActor(checkpoint, "cpu", 3, 0.2, 1).generate_images([_bass_image(300, 1), image],
                                                                         ["other", "clip"])
    assert torch.equal(other.images[1], outs_on[0])


def test_pix2pix_checkpoints_generate_too(tmp_path):
    from infer.generate_actor import GeneratorActor

    actor = GeneratorActor(str(write_tiny_checkpoint(tmp_path / "p2p", model="pix2pix")), "cpu", 2, 0.0, 0)
    image = _bass_image(2 * PARAMS.stride_frames + 100)
    out = actor.generate_images([image], ["clip"]).images[0]
    assert out.shape == image.shape and out.dtype == torch.uint8
    assert torch.equal(out, actor.generate_images([image], ["clip"]).images[0])  # eval mode: no dropout


def test_a_clip_that_cannot_be_written_leaves_an_error_row_and_no_partial_files(checkpoint, inputs, tmp_path):
    """The stage functions alone (no Ray): an output that cannot be written is reported, and the
    files already written for that clip are removed, so nothing half-written looks complete."""
    from infer.generate_actor import GeneratorActor
    from infer.generate_decode import decode_batch
    from infer.generate_render import render_batch

    batch = decode_batch({"clip_id": np.array(["lithium"], dtype=object),
                          "uri": np.array([str(inputs / "lithium.flac")], dtype=object)}, PARAMS.to_dict(), None)
    batch = GeneratorActor(checkpoint, "cpu", 4, 0.0, 0, n_iter=4)(batch)
    (tmp_path / "lithium" / "drums_mel.png").mkdir(parents=True)  # a folder where the PNG must go
    rows = [json.loads(r) for r in render_batch(batch, PARAMS.to_dict(), str(tmp_path), None, 0.0, "model", None)["result"]]
    assert rows[0]["stage"] == "render" and "drums_mel.png" in rows[0]["error"]
    assert sorted(p.name for p in (tmp_path / "lithium").iterdir()) == ["drums_mel.png"]


def test_unusable_checkpoints_are_clear_errors(tmp_path, inputs, capsys):
    from cycledrums_cli import main

    assert main(["generate", str(tmp_path / "nowhere"), str(inputs), str(tmp_path / "o1")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    broken = write_tiny_checkpoint(tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["ngf"] = 16  # the weights were saved with ngf 8
    (broken / "config.json").write_text(json.dumps(config))
    assert main(["generate", str(broken), str(inputs), str(tmp_path / "o2")]) == 2
    assert "cannot load the generator" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# ---------------------------------------------------------------- the job, on local Ray


@pytest.fixture(scope="module")
def first_run(ray_local, checkpoint, inputs, tmp_path_factory):
    from cycledrums_cli import main

    out = tmp_path_factory.mktemp("gen-a")
    assert main(["generate", checkpoint, str(inputs), str(out), "--seed", "1", "--generator-batch", "4"]) == 0
    return out


@pytest.mark.timeout(300)
def test_generate_writes_drums_and_mix_of_the_input_length(first_run, inputs):
    out = first_run
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert sorted(manifest["clip_id"]) == ["drone", "lithium", "song20"]
    assert len(pd.read_csv(out / "manifest.csv")) == 3
    for clip_id, source in (("song20", "song20.wav"), ("lithium", "lithium.flac")):
        info_in = sf.info(inputs / source)
        drums, rate_d = sf.read(out / clip_id / "drums.wav")
        mix, rate_m = sf.read(out / clip_id / "mix.wav", always_2d=True)
        assert rate_d == rate_m == info_in.samplerate == 44100       # default: the input's own rate
        assert len(drums) == len(mix) == info_in.frames               # to the sample
        assert drums.ndim == 1 and mix.shape[1] == info_in.channels  # mix keeps the bass's channels
        assert np.abs(drums).max() > 0.01
        assert (out / clip_id / "drums_mel.png").read_bytes()[:4] == b"\x89PNG"
        row = manifest.set_index("clip_id").loc[clip_id]
        assert row["samples"] == info_in.frames
        assert row["duration_s"] == pytest.approx(info_in.frames / 44100)
        assert row["seconds_generate"] > 0 and row["seconds_invert"] > 0
    # 20 s = 862 frames -> windows at 0, 206, 412 and 618 (the last one padded).
    assert manifest.set_index("clip_id").loc["song20", "windows"] == 4
    # The mix is the ORIGINAL bass plus the drums (both 16-bit, so within quantisation).
    bass, _ = sf.read(inputs / "song20.wav", always_2d=True)
    drums, _ = sf.read(out / "song20" / "drums.wav")
    mix, _ = sf.read(out / "song20" / "mix.wav", always_2d=True)
    row = manifest.set_index("clip_id").loc["song20"]
    mix_trim = 10 ** (row["mix_trim_db"] / 20)
    expected = (bass + drums[:, None]) * mix_trim   # the drums as written, the mix only peak-scaled
    np.testing.assert_allclose(mix, expected, atol=2e-4 * (2 + mix_trim))


@pytest.mark.timeout(300)
def test_on_a_cpu_cluster_the_actors_decode_and_write_their_clips(first_run, ray_task_names):
    # No decode or write task processes beside the actors: each would import torch while the
    # actors start, then share their cores (docs/design.md).
    names = ray_task_names("MapBatches(ClipActor)")
    assert any("MapBatches(ClipActor)" in n for n in names)
    assert not [n for n in names if "decode_batch" in n or "render_batch" in n]


@pytest.mark.timeout(300)
def test_generate_reports_bad_inputs_and_finishes_the_others(first_run):
    out = first_run
    errors = pd.read_csv(out / "errors.csv").set_index("clip_id")
    assert sorted(errors.index) == ["corrupt", "silent"]
    assert "silent" in errors.loc["silent", "reason"]
    assert "not a readable audio file" in errors.loc["corrupt", "reason"]
    assert not (out / "silent").exists() and not (out / "corrupt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == 3 and summary["errors"] == 2
    assert summary["model"] == "cyclegan"


@pytest.mark.timeout(300)
def test_generated_drums_have_no_level_jump_at_the_seams(first_run):
    """Steady input: the drums' envelope must not step or dip where windows are cross-faded."""
    drums, rate = sf.read(first_run / "drone" / "drums.wav")
    frame = PARAMS.hop_length * rate / PARAMS.sample_rate      # one mel frame, in output samples
    block = int(4 * frame)                                       # ~93 ms
    env = _envelope_db(drums, block)
    env = env[: len(env) - int(rate / block)]   # the last second: the generator's reply to the input's end
    steps = np.abs(np.diff(env))
    in_overlap = np.zeros(len(env), bool)
    for start in (206, 412, 618):                                # window starts, in frames
        in_overlap[int(start * frame / block): int((start + PARAMS.overlap_frames) * frame / block) + 1] = True
    seam_steps = steps[in_overlap[1:] | in_overlap[:-1]]
    level_gap = 10 * np.log10(np.mean(10 ** (env[in_overlap] / 10)) / np.mean(10 ** (env[~in_overlap] / 10)))
    print(f"\nenvelope: overlap vs rest {level_gap:+.2f} dB; steps in overlaps max {seam_steps.max():.2f} dB, "
          f"elsewhere p95 {np.percentile(steps, 95):.2f} dB")
    assert abs(level_gap) < 1.5        # no dip or bump where windows are blended
    assert seam_steps.max() <= max(2.0, 1.5 * np.percentile(steps[~(in_overlap[1:] | in_overlap[:-1])], 95))


@pytest.mark.timeout(300)
def test_seed_matters_only_with_variation(first_run, ray_local, checkpoint, inputs, tmp_path):
    from cycledrums_cli import main

    only = tmp_path / "in"
    only.mkdir()
    (only / "lithium.flac").write_bytes((inputs / "lithium.flac").read_bytes())
    runs = {}
    for name, args in {"off-seed2": ["--seed", "2"],
                       "on-seed1": ["--seed", "1", "--variation", "0.3", "--sample-rate", "16000"],
                       "on-seed2": ["--seed", "2", "--variation", "0.3", "--sample-rate", "16000"]}.items():
        runs[name] = tmp_path / name
        assert main(["generate", checkpoint, str(only), str(runs[name])] + args) == 0
    first = (first_run / "lithium" / "drums.wav").read_bytes()
    assert (runs["off-seed2"] / "lithium" / "drums.wav").read_bytes() == first
    on1, rate1 = sf.read(runs["on-seed1"] / "lithium" / "drums.wav")
    on2, rate2 = sf.read(runs["on-seed2"] / "lithium" / "drums.wav")
    assert rate1 == rate2 == 16000
    n_in = sf.info(inputs / "lithium.flac").frames
    assert len(on1) == len(on2) == -(-n_in * 16000 // 44100)   # ceil(n * 16000 / 44100)
    assert len(sf.read(runs["on-seed1"] / "lithium" / "mix.wav")[0]) == len(on1)
    assert not np.array_equal(on1, on2)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("job_fails", [False, True], ids=["finished", "failed"])
def test_a_job_leaves_no_actor_of_its_own_behind(ray_local, checkpoint, inputs, tmp_path, monkeypatch, job_fails):
    # A long-lived driver (a notebook, a benchmark) runs job after job: each job's placement
    # book must end with it, finished or failed, or every job leaves an idle process holding
    # memory and CPU.
    import cluster.resources as resources
    import infer.generate_stages as stages
    from cycledrums_cli import main

    books, new_book = [], resources.new_placement_book

    def recorded_book():
        books.append(new_book())
        return books[-1]

    def collection_fails(ds, n_clips):
        raise RuntimeError("the cluster went away mid-job")

    monkeypatch.setattr(resources, "new_placement_book", recorded_book)
    if job_fails:
        monkeypatch.setattr(stages, "collect_results", collection_fails)
    only = tmp_path / "in"
    only.mkdir()
    (only / "lithium.flac").write_bytes((inputs / "lithium.flac").read_bytes())
    args = ["generate", checkpoint, str(only), str(tmp_path / "out")]
    if job_fails:
        with pytest.raises(RuntimeError, match="went away"):
            main(args)
    else:
        assert main(args) == 0
    assert len(books) == 1
    with pytest.raises(ray_local.exceptions.RayActorError):
        ray_local.get(books[0].read.remote(), timeout=60)


def _in_process_gives_the_jobs_drums(checkpoint: str, windows: str, job_output: str, clip_ids: list[str],
                                     s3_endpoint: str) -> None:
    """generate_in_process (evaluate's report audio on CPU) on a few Parquet windows: the
    job's drums, read from the job's own window set on S3."""
    from pipelines.storage import fsspec_filesystem, read_bytes

    from infer.generate import GenerateConfig
    from infer.generate_preflight import preflight
    from infer.generate_stages import generate_in_process
    from infer.job_io import join_uri

    again = join_uri(job_output, "again")
    cfg, job = preflight(GenerateConfig(checkpoint=checkpoint, inputs=[windows], output=again,
                                        s3_endpoint_url=s3_endpoint))
    manifest, errors = generate_in_process(cfg, {**job, "kind": "parquet", "source": windows}, clip_ids, {})
    assert errors == [] and sorted(r["clip_id"] for r in manifest) == sorted(clip_ids)
    for cid in clip_ids:
        ours, theirs = (sf.read(io.BytesIO(read_bytes(join_uri(root, cid, "drums.wav"), s3_endpoint)))[0]
                        for root in (again, job_output))
        # The same up to float rounding (Griffin-Lim in other batches), which the peak limiter's
        # gain can lift with the drums' level: within 1/250 of the peak (-48 dB), plus 16-bit steps.
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 2 / 32768 + 4e-3 * np.abs(theirs).max(), cid
    fs, path = fsspec_filesystem(again, s3_endpoint)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(path)) == sorted(["drums.wav", "mix.wav", "drums_mel.png"]
                                                                          * len(clip_ids))


@pytest.mark.timeout(400)
def test_parquet_windows_on_s3_generate_then_score(ray_local, checkpoint, s3_bucket, s3_endpoint, tmp_path):
    """The paper's evaluation loop: test windows -> generated drum clips -> scores against the truth."""
    from cycledrums_cli import main
    from infer.inception import save_random_weights
    from train.synth_windows import write_synth_windows

    table = write_synth_windows(f"s3://{s3_bucket}/windows", tracks=6, seconds=12.0)
    test = table.filter(np.array(table.column("split").to_pylist()) == "test")
    expected = sorted(f"{t}/w{w:04d}" for t, w in zip(test.column("track_id").to_pylist(),
                                                       test.column("window").to_pylist()))
    out = f"s3://{s3_bucket}/generated"
    assert main(["generate", checkpoint, f"s3://{s3_bucket}/windows", out,
                 "--s3-endpoint-url", s3_endpoint]) == 0
    from pipelines.storage import fsspec_filesystem

    fs, _ = fsspec_filesystem(out, s3_endpoint)
    with fs.open(f"{s3_bucket}/generated/manifest.parquet", "rb") as f:
        manifest = pd.read_parquet(f)
    assert sorted(manifest["clip_id"]) == expected
    assert (manifest["samples"] == PARAMS.window_samples).all()
    assert (manifest["sample_rate"] == PARAMS.sample_rate).all()
    with fs.open(f"{s3_bucket}/generated/{expected[0]}/drums.wav", "rb") as f:
        assert sf.info(f).frames == PARAMS.window_samples
    _in_process_gives_the_jobs_drums(checkpoint, f"s3://{s3_bucket}/windows", out, expected[-2:], s3_endpoint)

    weights = save_random_weights(str(tmp_path / "inception.pth"), seed=0)
    scores = tmp_path / "scores"
    assert main(["score", out, f"s3://{s3_bucket}/windows", str(scores), "--inception-weights", weights,
                 "--s3-endpoint-url", s3_endpoint]) == 0
    clips = pd.read_csv(scores / "clips.csv")
    assert set(clips.loc[clips["baseline"], "set"]) == {"true-drums", "other-clip", "bass-copy",
                                                        "shaped-noise", "silence"}
    clips = clips[~clips["baseline"]]
    assert sorted(clips["clip_id"]) == expected
    assert (clips["set"] == "cyclegan").all()       # label from the generate summary
    assert not clips.select_dtypes("number").isna().to_numpy().any()
    # An untrained generator's drums do not track the true drums.
    assert clips["stoi_mean"].abs().mean() < 0.5
