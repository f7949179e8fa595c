"""benchmarks/real_songs.py: `evaluate` leave-one-song-out over a stems folder, end to end on the Lithium excerpt."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.test_generate import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SCRIPT = ROOT / "benchmarks" / "real_songs.py"
SHIFT_S = 2.4  # the second "song" is the excerpt from 2.4 s: other windows than the first's


def _benchmark(*argv: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def stems(tmp_path_factory) -> Path:
    """lithium-a (the 31 s excerpt), lithium-b (the same from 2.4 s), lithium-8s (one window only),
    drums-only (no bass stem)."""
    root = tmp_path_factory.mktemp("stems")
    for name, offset in (("lithium-a", 0.0), ("lithium-b", SHIFT_S)):
        (root / name).mkdir()
        for stem in ("bass", "drums"):
            audio, rate = sf.read(DATA / f"lithium_{stem}_31s.ogg")
            sf.write(root / name / f"{stem}.wav", audio[int(offset * rate):], rate)
    (root / "lithium-8s").mkdir()
    for stem in ("bass", "drums"):
        (root / "lithium-8s" / f"{stem}.flac").write_bytes((DATA / f"lithium_{stem}_8s.flac").read_bytes())
    (root / "drums-only").mkdir()
    (root / "drums-only" / "drums.flac").write_bytes((DATA / "lithium_drums_8s.flac").read_bytes())
    (root / "drums-only" / "other.flac").write_bytes((DATA / "lithium_bass_8s.flac").read_bytes())
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A shared model, a per-song model for each held-out song ({song} in the path) and an untrained one."""
    root = tmp_path_factory.mktemp("runs")
    for seed, song in enumerate(("lithium-a", "lithium-b")):
        write_tiny_checkpoint(root / f"without-{song}", seed=10 + seed)
    return {"shared": write_tiny_checkpoint(root / "shared", seed=1), "per_song": root / "without-{song}",
            "untrained": write_tiny_checkpoint(root / "untrained", seed=2)}


@pytest.fixture(scope="module")
def benchmarked(stems, runs, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("out")
    done = _benchmark(str(stems), str(out), "--model", f"shared={runs['shared']}",
                      "--per-song-model", f"loso={runs['per_song']}", "--untrained", str(runs["untrained"]),
                      "--max-clips-per-song", "2", "--griffin-lim-iters", "4", "--report-clips", "0", timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done


@pytest.mark.timeout(480)
def test_every_song_with_bass_is_held_out_once_and_the_others_are_skipped_saying_why(benchmarked, runs):
    out, done = benchmarked
    results = json.loads((out / "real_songs.json").read_text())
    assert sorted(results["songs"]) == ["lithium-a", "lithium-b"]
    assert "no bass stem" in results["skipped"]["drums-only"]
    assert "the baselines need 2" in results["skipped"]["lithium-8s"]
    assert "skipping drums-only: no bass stem" in done.stdout and "skipping lithium-8s" in done.stdout
    for song, result in results["songs"].items():
        # Leave-one-song-out: the fold's per-song model is the one trained without that song.
        assert result["models"] == {"shared": str(runs["shared"]), "loso": str(runs["per_song"]).format(song=song)}
        assert result["clips"] == 2 and result["windows"] == 4  # a seeded sample of the 4 windows kept
        summary = json.loads((Path(result["evaluate_output"]) / "summary.json").read_text())
        assert set(summary["sets"]) == {"shared", "loso", "untrained"}
        # The benchmark's ladder is evaluate's, on the same clips.
        assert result["ladder"] == {m: r["passes"] for m, r in summary["sanity_ladder"].items()}
    overall = results["overall"]
    assert overall["clips"] == sum(r["clips"] for r in results["songs"].values())


@pytest.mark.timeout(60)
def test_each_passing_metric_compares_the_models_with_the_baselines(benchmarked):
    out, done = benchmarked
    results = json.loads((out / "real_songs.json").read_text())
    markdown = (out / "real_songs.md").read_text()
    for title, result in [(f"held out: {s}", r) for s, r in results["songs"].items()] + \
            [("all 2 songs pooled", results["overall"])]:
        assert f"### {title}: {result['clips']} clips" in markdown and f"### {title}" in done.stdout
        passing = [m for m, ok in result["ladder"].items() if ok]
        assert sorted(result["compared"]) == sorted(passing)
        for metric in passing:
            means = result["compared"][metric]["means"]
            assert set(means) == {"shared", "loso", "untrained", "bass-copy", "other-clip", "true-drums"}
            beats = result["compared"][metric]["beats"]["shared"]
            lower = metric == "level_diff_db"
            assert beats["other-clip"] == (means["shared"] < means["other-clip"] if lower
                                           else means["shared"] > means["other-clip"])
            if metric == "level_diff_db":
                assert means["true-drums"] == 0.0  # the ceiling: mean |dB| off
    assert "| metric | shared | loso | untrained | bass-copy | other-clip | true-drums |" in markdown


@pytest.mark.timeout(60)
def test_clips_are_prepare_s_windows_of_the_song(benchmarked, stems):
    from pipelines.audio import load_audio
    from pipelines.mel import MelParams
    from pipelines.windows import track_windows

    out, _ = benchmarked
    params = MelParams()
    bass, drums = (load_audio(str(stems / "lithium-a" / f"{s}.wav"), params.sample_rate) for s in ("bass", "drums"))
    table, _ = track_windows("lithium-a", "test", bass, drums, params)
    starts = dict(zip(table.column("window").to_pylist(), table.column("start_frame").to_pylist()))
    clips = sorted((out / "lithium-a" / "testset" / "lithium-a").iterdir())
    assert len(clips) == 2 and {c.name for c in clips} <= {f"w{w:04d}" for w in starts}
    for clip in clips:
        audio, rate = sf.read(clip / "drums.wav", dtype="float32")
        first = starts[int(clip.name[1:])] * params.hop_length
        assert rate == params.sample_rate and len(audio) == params.window_samples
        np.testing.assert_array_equal(audio, drums.numpy()[first:first + params.window_samples])


@pytest.mark.timeout(60)
def test_bad_stems_folders_are_one_line_errors(tmp_path, runs):
    missing = _benchmark(str(tmp_path / "nowhere"), str(tmp_path / "out"), "--model", f"m={runs['shared']}",
                         timeout=60)
    assert missing.returncode == 2 and "stems folder not found" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0, missing.stderr
    (tmp_path / "no-bass" / "song").mkdir(parents=True)
    (tmp_path / "no-bass" / "song" / "drums.flac").write_bytes((DATA / "lithium_drums_8s.flac").read_bytes())
    no_bass = _benchmark(str(tmp_path / "no-bass"), str(tmp_path / "out"), "--model", f"m={runs['shared']}",
                         timeout=60)
    assert no_bass.returncode == 2 and "no song folder with both a bass" in no_bass.stderr
    template = _benchmark(str(tmp_path / "no-bass"), str(tmp_path / "out"), "--per-song-model", "m=/x/run",
                          timeout=60)
    assert template.returncode == 2 and "must hold {song}" in template.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_without_untrained_it_trains_one_step_at_lr_0_with_the_model_s_architecture(stems, runs, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_songs import Song, make_untrained

    from train.checkpoint import read_config, resolve_checkpoint

    song = Song("lithium-a", stems / "lithium-a" / "bass.wav", stems / "lithium-a" / "drums.wav")
    run = make_untrained(str(runs["shared"]), song, tmp_path)
    checkpoint = resolve_checkpoint(run)
    config, model = read_config(checkpoint), read_config(resolve_checkpoint(str(runs["shared"])))
    assert {k: config[k] for k in ("model", "ngf", "ndf", "n_blocks")} == \
        {k: model[k] for k in ("model", "ngf", "ndf", "n_blocks")} and config["lr"] == 0
    assert checkpoint.endswith("checkpoint_000000001")


@pytest.mark.timeout(60)
def test_where_the_bass_rests_every_set_is_measured_against_the_true_drums(benchmarked):
    """The rest table (issue #30): per song and pooled, each model and baseline over the clips whose bass
    rests (the Lithium excerpt has rests: its intro, and a break)."""
    from infer.bass_rests import rest_figures, rest_frames
    from infer.score_stages import load_mel_image
    from pipelines.mel import MelParams

    out, done = benchmarked
    results = json.loads((out / "real_songs.json").read_text())
    markdown = (out / "real_songs.md").read_text()
    for title, result in [(f"held out: {s}", r) for s, r in results["songs"].items()] + \
            [("all 2 songs pooled", results["overall"])]:
        rests = result["rests"]
        assert rests["clips"] == result["clips"] and len(rests["per_clip"]) == rests["clips"]
        heading = f"#### {title}, where the bass rests: {rests['clips_with_rests']} of {rests['clips']} clips"
        assert heading in markdown and heading in done.stdout
        if not rests["clips_with_rests"]:
            assert rests["sets"] == {}
            continue
        assert set(rests["sets"]) == {"shared", "loso", "untrained", "other-clip", "bass-copy", "shaped-noise",
                                      "true-drums"}
        for label, figures in rests["sets"].items():
            assert figures["clips"] == rests["clips_with_rests"]
            assert all(np.isfinite(figures[k]) for k in ("rest_share", "level_diff_db", "steadiness"))
            assert figures["onset_agreement"] is None or np.isfinite(figures["onset_agreement"])
        true = rests["sets"]["true-drums"]
        assert true["level_diff_db"] == 0.0 and true["onset_agreement"] in (None, 1.0)
    # The pooled table pools the songs' clips; and a clip's figures are bass_rests' on the kept audio.
    assert results["overall"]["rests"]["clips_with_rests"] == sum(
        r["rests"]["clips_with_rests"] for r in results["songs"].values())
    params = MelParams()
    song, result = next((s, r) for s, r in results["songs"].items() if r["rests"]["clips_with_rests"])
    clip_id, figures = next((c, f) for c, f in result["rests"]["per_clip"].items() if f is not None)
    testset, audio = out / song / "testset", Path(result["evaluate_output"]) / "audio"
    bass, drums = (load_mel_image(str(testset / clip_id / f"{stem}.wav"), params) for stem in ("bass", "drums"))
    generated = load_mel_image(str(audio / "shared" / clip_id / "drums.wav"), params)
    assert rest_frames(bass).sum() >= 22
    expected = rest_figures(generated, drums, bass, params)
    assert set(figures["shared"]) == set(expected)
    for key, value in expected.items():
        assert figures["shared"][key] == (None if value is None else pytest.approx(value))


@pytest.mark.timeout(60)
def test_rhythm_pattern_is_shown_in_parts_that_multiply_back_to_evaluate_s_scores(benchmarked):
    """Issue #30: to see why a model's pattern falls short (it follows the bass, its hits are weak, or
    they fall elsewhere), each song's and the pooled table split rhythm_pattern into gate x strength x
    correlation, per clip; their product's mean must be the pattern evaluate scored."""
    import pandas as pd

    out, done = benchmarked
    results = json.loads((out / "real_songs.json").read_text())
    markdown = (out / "real_songs.md").read_text()
    tables = []
    for title, result in [(f"held out: {s}", r) for s, r in results["songs"].items()] + \
            [("all 2 songs pooled", results["overall"])]:
        heading = f"#### {title}, rhythm_pattern in parts (per clip: gate x strength x correlation)"
        assert heading in markdown and heading in done.stdout
        parts = result["pattern_parts"]
        if "evaluate_output" in result:
            tables.append(pd.read_parquet(Path(result["evaluate_output"]) / "clips.parquet"))
        clips = pd.concat(tables) if title.startswith("all") else tables[-1]
        playing = clips[clips["drums_active"]]
        assert set(parts["sets"]) == {"shared", "loso", "untrained", "other-clip"}
        for label, figures in parts["sets"].items():
            scored = playing.loc[playing["set"] == label, "rhythm_pattern"]
            assert figures["clips"] == len(scored) > 0
            assert figures["rhythm_pattern"] == pytest.approx(scored.mean(), abs=1e-6), label
            assert 0.0 <= figures["gate"] <= 1.0 and 0.0 <= figures["strength"] <= 1.0
            assert -1.0 <= figures["correlation"] <= 1.0


@pytest.mark.timeout(120)
def test_mixing_other_stems_into_the_input_keeps_the_clips_and_the_rests_reference(stems, tmp_path):
    """--mix-in other: bass.wav is the model's input (bass + other), bass_stem.wav the bass alone
    (where the rests are found), and the windows are the ones chosen without it; a song lacking
    the stem is skipped saying so."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_song_folds
    import real_songs
    from pipelines.audio import load_audio
    from pipelines.mel import MelParams

    params = MelParams()
    song_dir = tmp_path / "stems" / "lithium-o"
    song_dir.mkdir(parents=True)
    for stem in ("bass", "drums"):
        (song_dir / f"{stem}.wav").symlink_to(stems / "lithium-a" / f"{stem}.wav")
    audio, rate = sf.read(stems / "lithium-a" / "bass.wav")
    other = 0.1 * np.sin(2 * np.pi * 660.0 * np.arange(len(audio)) / rate)
    sf.write(song_dir / "other.wav", other, rate)
    (tmp_path / "stems" / "no-other").mkdir()
    for stem in ("bass", "drums"):
        (tmp_path / "stems" / "no-other" / f"{stem}.wav").symlink_to(stems / "lithium-a" / f"{stem}.wav")

    songs, skipped = real_songs.find_songs([tmp_path / "stems"], ("other",))
    assert [s.name for s in songs] == ["lithium-o"] and "no other stem" in skipped["no-other"]
    plain, _ = real_songs.find_songs([tmp_path / "stems"])
    plain_song = next(s for s in plain if s.name == "lithium-o")
    real_songs.cut_clips(plain_song, tmp_path / "plain", 3, seed=0)
    real_songs.cut_clips(songs[0], tmp_path / "mixed", 3, seed=0)
    clips = sorted(p.name for p in (tmp_path / "mixed" / "lithium-o").iterdir())
    assert clips == sorted(p.name for p in (tmp_path / "plain" / "lithium-o").iterdir()) and len(clips) == 3
    bass, _, table = real_songs.song_windows(songs[0], params)
    starts = dict(zip(table.column("window").to_pylist(), table.column("start_frame").to_pylist()))
    summed = bass + load_audio(str(song_dir / "other.wav"), params.sample_rate).numpy()[:len(bass)]
    for clip in clips:
        mixed, plain_clip = tmp_path / "mixed" / "lithium-o" / clip, tmp_path / "plain" / "lithium-o" / clip
        alone, _ = sf.read(mixed / "bass_stem.wav", dtype="float32")
        np.testing.assert_array_equal(alone, sf.read(plain_clip / "bass.wav", dtype="float32")[0])
        first = starts[int(clip[1:])] * params.hop_length
        model_input, _ = sf.read(mixed / "bass.wav", dtype="float32")
        np.testing.assert_allclose(model_input, summed[first:first + len(alone)], atol=1e-6)
        assert not (plain_clip / "bass_stem.wav").exists()
    images = real_songs.clip_images(tmp_path / "mixed", f"lithium-o/{clips[0]}", params)
    assert not np.array_equal(images["rests"], images["bass"])

    written = real_song_folds.input_stem(songs[0], tmp_path / "inputs")
    assert written == tmp_path / "inputs" / "lithium-o" / "bass.wav"
    np.testing.assert_allclose(sf.read(written, dtype="float32")[0], summed, atol=1e-6)
    assert real_song_folds.input_stem(plain_song, tmp_path / "inputs") == plain_song.bass
