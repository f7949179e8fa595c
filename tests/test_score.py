"""`cycledrums score`: the features, the density models, the grader, and the Ray job end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from infer import features as F
from infer.grader import AnnotationError, grade_to_bucket, read_annotations
from pipelines.mel import MelParams, audio_to_image

DATA = Path(__file__).parent / "data"
RATE = 22050
PARAMS = MelParams()


def _mel(path_or_audio) -> np.ndarray:
    """uint8 mel image of a file (mono, 22,050 Hz) or an audio array."""
    if isinstance(path_or_audio, (str, Path)):
        from pipelines.audio import load_audio

        audio = load_audio(str(path_or_audio), RATE)
    else:
        audio = torch.as_tensor(np.asarray(path_or_audio, np.float32))
    return audio_to_image(audio, PARAMS).numpy()


def _db(image: np.ndarray) -> np.ndarray:
    return PARAMS.db_min + image.astype(np.float64) * PARAMS.db_step


@pytest.fixture(scope="module")
def lithium():
    return _mel(DATA / "lithium_drums_8s.flac"), _mel(DATA / "lithium_bass_8s.flac")


# ---------------------------------------------------------------- features


def test_stoi_identical_real_drums_is_one_on_active_bins(lithium):
    drums, _ = lithium
    stoi = F.stoi_like(_db(drums), _db(drums))
    active = F.active_bins(_db(drums))
    assert stoi.shape == (256,)
    assert active.sum() > 200  # real drums excite most of the mel bins
    np.testing.assert_allclose(stoi[active], 1.0, atol=1e-9)
    assert np.all(stoi[~active] == 0.0)


def test_stoi_noise_is_about_zero_and_constant_rows_are_zero_not_nan(lithium):
    drums, _ = lithium
    rng = np.random.default_rng(0)
    noise = _mel(0.1 * rng.standard_normal(8 * RATE))
    stoi = F.stoi_like(_db(drums), _db(noise))
    assert abs(stoi.mean()) < 0.05
    assert np.abs(stoi).max() < 0.5
    silent = np.zeros_like(drums)
    for a, b in ((drums, silent), (silent, drums), (silent, silent)):
        s = F.stoi_like(_db(a), _db(b))
        assert np.isfinite(s).all() and np.all(s == 0.0)
    assert F.stoi_mean(F.stoi_like(_db(silent), _db(silent)), _db(silent)) == 0.0


def test_rhythm_features_reward_the_true_timing_not_a_copy_of_the_bass_and_never_nan(lithium):
    drums, bass = lithium
    fps = RATE / PARAMS.hop_length
    true = F.rhythm_features(_db(drums), _db(drums), _db(bass), fps)
    shifted = F.rhythm_features(np.roll(_db(drums), 9, axis=1), _db(drums), _db(bass), fps)  # ~0.2 s late
    copy = F.rhythm_features(_db(bass), _db(drums), _db(bass), fps)    # a "model" that copies its input
    assert true["rhythm_true_onsets"] == pytest.approx(1.0)
    assert true["rhythm_pattern"] == pytest.approx(1.0)
    assert shifted["rhythm_true_onsets"] < 0.5
    for name in ("rhythm_true_onsets", "rhythm_pattern"):
        assert copy[name] < 0.5 * true[name], name   # the reported bug: the bass copy scored above the drums
    silent = np.full_like(_db(drums), PARAMS.db_min)
    for gen, bass_mel in ((silent, _db(bass)), (silent, None), (_db(drums), silent)):
        values = F.rhythm_features(gen, _db(drums), bass_mel, fps)
        assert set(values) == set(F.RHYTHM_FEATURES)
        assert all(np.isfinite(v) for v in values.values())


def test_the_rhythm_gate_gives_a_copy_of_the_bass_nothing_however_quiet_or_filtered(lithium):
    """Issue #30: on real songs spectrum_match let a bass copy through (an 808 kit sits where the bass
    does); the gate now asks how unlike a copy of the input the drums are, against the true drums."""
    drums, bass = (_db(x) for x in lithium)
    floor = np.full_like(bass, PARAMS.db_min)
    quieter = np.maximum(bass - 12.0, PARAMS.db_min)
    low_passed = np.where(np.arange(bass.shape[0])[:, None] < 40, bass, floor)
    for copy in (bass, quieter, low_passed):
        assert F.bass_independence(copy, drums, bass) < 0.15
    assert F.bass_independence(drums, drums, bass) == pytest.approx(1.0)
    assert F.bass_independence(np.roll(drums, 37, axis=1), drums, bass) > 0.8   # real drums, another bar
    assert F.bass_independence(bass, drums, None) == 1.0                       # no input: nothing to copy
    assert F.bass_independence(bass, drums, floor) == 1.0                      # a silent bass: nothing either


def test_rhythm_tempo_is_the_true_drums_pulse_even_where_the_bass_holds_one_note(lithium):
    """On real songs the bass's beat period missed the true drums' pulse (they scored 0 on 4 of 7
    clips): the tempo reference is now the true drums' own period."""
    drums, bass = (_db(x) for x in lithium)
    fps = RATE / PARAMS.hop_length
    held = np.repeat(bass[:, 40:41], bass.shape[1], axis=1)   # one bass frame held all along
    held[:, :5] = PARAMS.db_min                                # ... after a rest: one onset, no pulse
    for bass_mel in (bass, held, None):
        true = F.rhythm_features(drums, drums, bass_mel, fps)
        assert true["rhythm_tempo"] > 0.3
        assert F.rhythm_features(np.full_like(drums, PARAMS.db_min), drums, bass_mel, fps)["rhythm_tempo"] == 0.0


def test_rhythm_tempo_gives_a_hum_that_swells_at_the_beat_period_nothing(lithium):
    """Issue #30: an untrained U-Net's output on real songs is a steady hum whose loudness swells
    slowly with the bass.  Its whole-spectrum onset envelope is tiny but periodic, so the tempo
    taken on it scored above every trained model; per band, weighted by the onset strength, it
    scores next to nothing."""
    drums, bass = (_db(x) for x in lithium)
    fps = RATE / PARAMS.hop_length
    period = F.beat_period(F.onset_envelope(drums), fps)
    assert period > 0
    swell = 3.0 * np.sin(2 * np.pi * np.arange(drums.shape[1]) / period)      # +-3 dB, once a beat
    hum = np.clip(drums.mean(axis=1, keepdims=True) + swell[None, :], PARAMS.db_min, PARAMS.db_max)
    true = F.rhythm_features(drums, drums, bass, fps)["rhythm_tempo"]
    assert true > 0.3
    assert F.autocorr(F.onset_envelope(hum), period) > 2 * true    # the old definition: the hum on top
    assert F.rhythm_features(hum, drums, bass, fps)["rhythm_tempo"] < 0.25 * true


def test_rhythm_tempo_gives_a_frame_by_frame_checkerboard_nothing(lithium):
    """Issue #30: an untrained U-Net's output alternates frame by frame in its upper bands (the
    transposed convolutions' checkerboard).  That envelope's autocorrelation is about +1 at every
    even lag, so read at a true beat period of 42 frames it "pulsed at the tempo" (0.08 on two
    Lithium clips, above both trained models).  The tempo is read on the smoothed envelope."""
    drums, bass = (_db(x) for x in lithium)
    fps = RATE / PARAMS.hop_length
    period = F.beat_period(F.onset_envelope(drums), fps)
    assert period % 2 == 0                    # the case where the alternation aliases into the beat
    alternation = 4.0 * (-1.0) ** np.arange(drums.shape[1])                      # +-4 dB, every frame
    checkerboard = np.clip(drums.mean(axis=1, keepdims=True) + alternation[None, :],
                           PARAMS.db_min, PARAMS.db_max)
    true = F.rhythm_features(drums, drums, bass, fps)["rhythm_tempo"]
    assert true > 0.3
    raw = [F.autocorr(env, period) for env in F.band_onset_envelopes(checkerboard, RATE)]
    assert min(raw) > 0.9                     # unsmoothed, every band "pulses" at the period
    assert F.rhythm_features(checkerboard, drums, bass, fps)["rhythm_tempo"] < 0.05 * true
    late = np.roll(drums, 5, axis=1)           # real hits, off the beat's phase: still the tempo
    assert F.rhythm_features(late, drums, bass, fps)["rhythm_tempo"] > 0.8 * true


def test_pattern_parts_multiply_to_rhythm_pattern_and_say_which_part_falls_short(lithium):
    """The real-song benchmark splits rhythm_pattern into gate x strength x correlation (issue #30):
    the parts must give back the metric, and each must drop where its own failure is."""
    drums, bass = (_db(x) for x in lithium)
    fps = RATE / PARAMS.hop_length
    softer = PARAMS.db_min + 0.4 * (drums - PARAMS.db_min)          # the same hits, 0.4 of their dB range
    late = np.roll(drums, 37, axis=1)                                # real drums of another bar
    for gen in (drums, softer, late, 0.5 * drums + 0.5 * bass, bass):
        parts = F.pattern_parts(gen, drums, bass, fps)
        product = parts["gate"] * parts["strength"] * parts["correlation"]
        assert product == pytest.approx(F.rhythm_features(gen, drums, bass, fps)["rhythm_pattern"], abs=1e-9)
    assert F.pattern_parts(drums, drums, bass, fps) == pytest.approx({"gate": 1, "strength": 1, "correlation": 1})
    assert F.pattern_parts(softer, drums, bass, fps)["strength"] < 0.6
    assert F.pattern_parts(softer, drums, bass, fps)["correlation"] > 0.9
    assert F.pattern_parts(bass, drums, bass, fps)["gate"] < 0.15
    assert F.pattern_parts(drums, np.full_like(drums, PARAMS.db_min), bass, fps) is None


def test_mel_bin_frequencies_span_the_codec_range():
    freqs = F.mel_bin_frequencies(256, RATE)
    assert freqs.shape == (256,) and np.all(np.diff(freqs) > 0)
    assert 0 < freqs[0] < 30 and 10500 < freqs[-1] < RATE / 2


def test_beat_period_finds_the_tempo_of_a_click_track():
    fps = RATE / PARAMS.hop_length
    env = np.zeros(400)
    period = 21  # ~0.49 s: 123 BPM
    env[::period] = 1.0
    assert F.beat_period(env, fps) == period


# ---------------------------------------------------------------- grader basics


def test_grade_buckets_follow_the_paper():
    assert [grade_to_bucket(g) for g in range(10)] == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        grade_to_bucket(10)


def test_report_clips_do_not_depend_on_the_order_the_rows_arrive_in():
    from infer.html_report import report_clips

    # Ties are common (an untrained model's clips all score alike); the rows arrive in the order
    # the actors finish, so evaluate and generate-then-score must still pick the same clips.
    table = pd.DataFrame({"set": "model", "clip_id": [f"c{i:02d}" for i in range(12)],
                          "stoi_mean": [0.5] * 6 + [0.1, 0.9, 0.5, 0.5, 0.2, 0.5]})
    picks = report_clips(table, None, ["model"], 6, seed=0)
    assert picks["model"][:2] == [("c06", "worst"), ("c10", "worst")]
    for order in range(5):
        assert report_clips(table.sample(frac=1, random_state=order), None, ["model"], 6, seed=0) == picks
    # The same clips scored from a 16-bit WAV instead of memory differ in the 6th digit: still the same picks.
    jitter = np.random.default_rng(0).uniform(-2e-6, 2e-6, len(table))
    assert report_clips(table.assign(stoi_mean=table["stoi_mean"] + jitter), None, ["model"], 6, seed=0) == picks


def test_annotations_csv_is_checked(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("clip_id,rater,quality,contamination,credibility,time\na,r1,7,8,6,9\n")
    assert len(read_annotations(str(good))) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("clip_id,rater,quality,contamination,credibility,time\na,r1,7,8,6,10\n")
    with pytest.raises(AnnotationError, match="time"):
        read_annotations(str(bad))
    missing = tmp_path / "missing.csv"
    missing.write_text("clip_id,rater,quality\na,r1,7\n")
    with pytest.raises(AnnotationError, match="missing columns"):
        read_annotations(str(missing))


# ---------------------------------------------------------------- the job, on a synthetic grading

BUCKET_RANGES = {0: (0, 3), 1: (4, 5), 2: (6, 7), 3: (8, 9)}
CLIP_SECONDS = 3.0


def _true_clips(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """n (drums, bass) pairs of CLIP_SECONDS from procedural songs (tempo, key, pattern vary)."""
    from pipelines.synth import SongPlan, render_song

    rng = np.random.default_rng(seed)
    clip = int(CLIP_SECONDS * RATE)
    per_song = 4
    clips = []
    for song in range((n + per_song - 1) // per_song):
        plan = SongPlan(name=f"s{song}", split="test", bpm=float(rng.integers(90, 141)),
                        root_midi=int(rng.integers(28, 40)), seed=int(rng.integers(2**31)))
        stems = render_song(plan, per_song * CLIP_SECONDS, rate=RATE)
        for k in range(per_song):
            sl = slice(k * clip, (k + 1) * clip)
            clips.append((stems["drums"][sl].astype(np.float32), stems["bass"][sl].astype(np.float32)))
    return clips[:n]


def _degrade(drums: np.ndarray, bass: np.ndarray, bucket: int, rng) -> np.ndarray:
    """A known grading: how the "generated" drums were made decides their bucket."""
    peak = np.abs(drums).max()
    if bucket == 3:   # near perfect: the true drums, a faint hiss
        return drums + 0.003 * peak * rng.standard_normal(len(drums))
    if bucket == 2:   # good sounds, off the beat: shifted by 150-350 ms
        return np.roll(drums, int(rng.uniform(0.15, 0.35) * RATE))
    if bucket == 1:   # contaminated: bass leaking in over quieter drums
        return 0.3 * drums + 1.5 * bass
    if rng.random() < 0.5:   # bad: silence or loud noise
        return np.zeros_like(drums)
    return 0.5 * peak * rng.standard_normal(len(drums))


def _write_graded_set(root: Path, n_per_bucket: int, seed: int) -> tuple[Path, Path, pd.DataFrame]:
    """REFERENCE (<clip>/drums.wav + bass.wav) and GENERATED (<clip>.wav) folders and the clips' buckets."""
    rng = np.random.default_rng(seed)
    ref, gen = root / "reference", root / "generated"
    rows = []
    buckets = np.repeat(np.arange(4), n_per_bucket)
    rng.shuffle(buckets)
    for i, ((drums, bass), bucket) in enumerate(zip(_true_clips(len(buckets), seed), buckets)):
        clip_id = f"clip{seed}-{i:03d}"
        (ref / clip_id).mkdir(parents=True)
        gen.mkdir(exist_ok=True)
        sf.write(ref / clip_id / "drums.wav", drums, RATE, subtype="FLOAT")
        sf.write(ref / clip_id / "bass.wav", bass, RATE, subtype="FLOAT")
        sf.write(gen / f"{clip_id}.wav", np.clip(_degrade(drums, bass, int(bucket), rng), -1, 1), RATE,
                 subtype="FLOAT")
        rows.append({"clip_id": clip_id, "bucket": int(bucket)})
    return ref, gen, pd.DataFrame(rows)


def _annotations(truth: pd.DataFrame, path: Path, seed: int) -> Path:
    """4 raters x 4 dimensions, each grade inside the clip's bucket range (so the mean is too)."""
    rng = np.random.default_rng(seed)
    rows = []
    for clip_id, bucket in zip(truth["clip_id"], truth["bucket"]):
        lo, hi = BUCKET_RANGES[bucket]
        for rater in ("guitarist", "drummer", "producer1", "producer2"):
            grades = rng.integers(lo, hi + 1, size=4)
            rows.append({"clip_id": clip_id, "rater": rater, "quality": grades[0],
                         "contamination": grades[1], "credibility": grades[2], "time": grades[3]})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from infer.inception import save_random_weights

    return str(save_random_weights(str(tmp_path_factory.mktemp("inception") / "inception_seed0.pth"), seed=0))


@pytest.mark.timeout(600)
def test_score_job_trains_a_grader_that_predicts_held_out_buckets(ray_local, tmp_path, inception_file,
                                                                  ray_task_names):
    from cycledrums_cli import main

    ref, gen, truth = _write_graded_set(tmp_path / "train", n_per_bucket=8, seed=1)
    (gen / "broken.wav").write_bytes(b"RIFF not really a wav file")
    annotations = _annotations(truth, tmp_path / "annotations.csv", seed=1)
    out = tmp_path / "scores"
    assert main(["score", f"synthetic={gen}", str(ref), str(out), "--annotations", str(annotations),
                 "--inception-weights", inception_file, "--inception-batch", "8", "--report-clips", "0"]) == 0

    everything = pd.read_parquet(out / "clips.parquet")
    assert len(everything) == len(pd.read_csv(out / "clips.csv"))
    clips = everything[~everything["baseline"]].reset_index(drop=True)
    assert len(clips) == len(truth)
    # Baselines: every reference clip, as sets of their own, in the same table.
    baselines = everything[everything["baseline"]]
    assert set(baselines["set"]) == {"true-drums", "other-clip", "bass-copy", "shaped-noise", "silence"}
    assert (baselines.groupby("set").size() == len(truth)).all()
    true_rows = baselines[baselines["set"] == "true-drums"]
    assert np.allclose(true_rows["stoi_mean"], 1.0) and np.allclose(true_rows["rhythm_true_onsets"], 1.0)
    numeric = clips.select_dtypes("number")
    assert not numeric.isna().to_numpy().any()
    assert {f"stoi_{i:03d}" for i in range(256)} <= set(clips.columns)
    assert {"density_mixed_5d", "density_mixed_6e", "density_pool3", "bucket_pred", "prob_3"} <= set(clips.columns)
    np.testing.assert_allclose(clips[[f"prob_{b}" for b in range(4)]].sum(axis=1), 1.0, atol=1e-6)
    merged = clips.merge(truth, on="clip_id", suffixes=("", "_truth"))
    assert (merged["bucket"] == merged["bucket_truth"]).all()  # annotations averaged into the right bucket
    # Near-perfect clips correlate with the truth far better than noise / silence.
    by_bucket = merged.groupby("bucket_truth")["stoi_mean"].mean()
    assert by_bucket[3] > 0.7 and by_bucket[0] < 0.2

    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["clip_id"]) == ["broken"]  # corrupt file: an error row, the rest scored
    summary = json.loads((out / "summary.json").read_text())
    grader = summary["grader"]
    print(f"\ngrader cross-validated accuracy: {grader['cv_accuracy']:.3f} "
          f"(chance 0.25), confusion {grader['confusion_matrix']}")
    assert grader["cv_accuracy"] >= 0.7
    assert summary["sets"]["synthetic"]["scored"] == len(truth)
    for label, s in list(summary["sets"].items()) + list(summary["baselines"].items()):
        level = everything[everything["set"] == label]["level_diff_db"]   # judged as dB off, not signed
        assert s["mean"]["level_error_db"] == pytest.approx(level.abs().mean())
        assert s["mean"]["level_diff_db"] == pytest.approx(level.mean())
    assert set(summary["baselines"]) == set(baselines["set"]) and summary["baselines"]["silence"]["baseline"]
    ladder = summary["sanity_ladder"]
    print("sanity ladder:", {m: r["passes"] for m, r in ladder.items()})
    assert set(ladder) == {"stoi_mean", "level_diff_db", "spectrum_match", "rhythm_true_onsets", "rhythm_pattern",
                           "rhythm_tempo", "density_mixed_5d", "density_mixed_6e", "density_pool3"}
    assert ladder["rhythm_true_onsets"]["passes"]
    assert set(grader["feature_names"]) == {m for m, r in ladder.items() if r["passes"]}
    assert all(v["value"] is not None and v["value"] >= 0 and v["clips"] == len(truth)
               for v in summary["sets"]["synthetic"]["frechet_distance"].values())
    for png in ("buckets.png", "grades.png", "features.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # On a CPU cluster the actors decode the reference audio themselves: no decode task processes.
    names = ray_task_names("MapBatches(FeaturesInceptionActor)")
    assert any("MapBatches(FeaturesInceptionActor)" in n for n in names)
    assert not [n for n in names if "audio_reference_batch" in n]

    # The saved grader, applied to clips it has never seen (other songs, other degradations).
    # A second set scored in the same run (as CycleGAN vs Pix2Pix would be): the true drums.
    ref2, gen2, truth2 = _write_graded_set(tmp_path / "heldout", n_per_bucket=3, seed=2)
    true2 = tmp_path / "heldout" / "true"
    true2.mkdir()
    for clip_id in truth2["clip_id"]:
        (true2 / f"{clip_id}.wav").write_bytes((ref2 / clip_id / "drums.wav").read_bytes())
    out2 = tmp_path / "scores2"
    assert main(["score", str(gen2), str(ref2), str(out2), "--also", f"truth={true2}", "--no-baselines",
                 "--report-clips", "0", "--grader", str(out / "grader.json"),
                 "--inception-weights", inception_file]) == 0
    scored = pd.read_csv(out2 / "clips.csv")
    held = scored[scored["set"] == "generated"].merge(truth2, on="clip_id")
    accuracy = float((held["bucket_pred"] == held["bucket"]).mean())
    print(f"held-out accuracy of the saved grader: {accuracy:.3f} on {len(held)} clips (chance 0.25)")
    assert len(held) == len(truth2)
    assert accuracy >= 0.6
    summary2 = json.loads((out2 / "summary.json").read_text())
    assert set(summary2["sets"]) == {"generated", "truth"} and not summary2["baselines"]
    assert summary2["sanity_ladder"] is None
    true_hist = summary2["sets"]["truth"]["predicted_bucket_histogram"]
    assert true_hist[3] >= 0.75 * len(truth2)     # the true drums grade as near-perfect
    assert summary2["sets"]["truth"]["mean"]["stoi_mean"] == pytest.approx(1.0, abs=1e-6)
    assert (out2 / "buckets.png").exists()


def test_score_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    from cycledrums_cli import main

    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "empty-hub"))
    (tmp_path / "g").mkdir()
    rc = main(["score", str(tmp_path / "g"), str(tmp_path / "g"), str(tmp_path / "o")])
    assert rc == 2


# ---------------------------------------------------------------- checks before the job


def _no_ray(monkeypatch):
    """Fail the test if the job gets as far as starting Ray."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the check did not run before the job")
    monkeypatch.setattr("cluster.ray_runtime.init_ray", refuse)


def _tiny_set(root: Path, ids: list[str]) -> Path:
    for clip_id in ids:
        (root / clip_id).mkdir(parents=True)
        sf.write(root / clip_id / "drums.wav", np.zeros(RATE, np.float32), RATE)
    return root


def test_score_with_no_matching_clip_exits_2_and_shows_ids_and_the_rule(tmp_path, inception_file, monkeypatch,
                                                                        capsys):
    from cycledrums_cli import main

    _no_ray(monkeypatch)
    ref = _tiny_set(tmp_path / "ref", ["song-a", "song-b"])
    gen = _tiny_set(tmp_path / "gen", ["take-1", "take-2"])
    rc = main(["score", f"model={gen}", str(ref), str(tmp_path / "out"), "--inception-weights", inception_file])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no clip of set 'model'" in err and "'take-1'" in err and "'song-a'" in err
    assert "leading folders removed" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_inception_weights_and_a_file_as_output_fail_before_ray(tmp_path, inception_file, monkeypatch, capsys):
    from cycledrums_cli import main

    _no_ray(monkeypatch)
    ref = _tiny_set(tmp_path / "ref", ["a", "b"])
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a state dict")
    assert main(["score", str(ref), str(ref), str(tmp_path / "out"), "--inception-weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--inception-weights" in err and "not a torch state dict" in err and len(err.strip().splitlines()) == 1
    assert main(["score", str(ref), str(ref), str(tmp_path / "out"), "--inception-weights",
                 str(tmp_path / "missing.pth")]) == 2
    assert "not found" in capsys.readouterr().err
    output_file = tmp_path / "taken.txt"
    output_file.write_text("keep me")
    assert main(["score", str(ref), str(ref), str(output_file), "--inception-weights", inception_file]) == 2
    assert "existing file" in capsys.readouterr().err
    assert output_file.read_text() == "keep me"
