"""score's inputs before Ray: clip matching, baselines and the sanity ladder (no Ray, no Inception)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from infer.baselines import (BASS, NOISE, OTHER, SILENCE, TRUE, baseline_images, derangement, shaped_noise_image,
                             song_derangement)
from infer.ladder import passing_metrics, sanity_ladder
from infer.score_inputs import (GeneratedSet, ScoreError, attach_matches, load_generated_sets, load_reference,
                                match_clip_ids)
from pipelines.mel import MelParams

RATE = 22050


def test_matching_rule_equal_or_leading_folders_removed_and_never_ambiguous():
    reference = ["test/track-1", "test/track-2", "train/track-3", "a/x", "b/x"]
    got = match_clip_ids(["test/track-1", "track-2", "songs/train/track-3", "x", "nothing"], reference)
    assert got == {"test/track-1": "test/track-1", "track-2": "test/track-2",
                   "songs/train/track-3": "train/track-3"}  # "x" fits two clips: not matched


def _stems(root, names):
    for split, track in names:
        folder = root / split / track
        folder.mkdir(parents=True)
        for stem in ("drums", "bass"):
            sf.write(folder / f"{stem}.wav", np.zeros(RATE // 2, np.float32), RATE)


def test_a_stems_root_and_its_split_folder_both_match(tmp_path):
    stems = tmp_path / "stems"
    _stems(stems, [("test", "t1"), ("test", "t2"), ("train", "t3")])
    gen_split, gen_root = tmp_path / "gen_split", tmp_path / "gen_root" / "test"
    for folder in (gen_split, gen_root):
        folder.mkdir(parents=True)
        for t in ("t1", "t2"):
            sf.write(folder / f"{t}.wav", np.zeros(RATE // 2, np.float32), RATE)
    for reference_uri in (stems, stems / "test"):
        reference = load_reference(str(reference_uri), None)
        for generated in (gen_split, tmp_path / "gen_root"):
            sets = load_generated_sets([f"g={generated}"], None)
            attach_matches(sets, reference)
            assert len(sets[0].matches) == 2, (reference_uri, generated, sets[0].matches)
    assert reference.audio_rows[0]["bass_uri"].endswith("bass.wav")


def test_no_matching_clip_is_an_error_that_shows_ids_and_the_rule(tmp_path):
    _stems(tmp_path / "ref", [("test", "song-a"), ("test", "song-b")])
    reference = load_reference(str(tmp_path / "ref"), None)
    sets = [GeneratedSet("cyclegan", "gen", [type("C", (), {"clip_id": "other-1"})(),
                                             type("C", (), {"clip_id": "other-2"})()])]
    with pytest.raises(ScoreError) as err:
        attach_matches(sets, reference)
    message = str(err.value)
    assert "'other-1'" in message and "'test/song-a'" in message and "leading folders removed" in message


# ---------------------------------------------------------------- baselines


def test_derangement_pairs_every_clip_with_another_reproducibly():
    for n in (2, 3, 10, 101):
        p = derangement(n, seed=7)
        assert sorted(p) == list(range(n)) and np.all(p != np.arange(n))
        assert np.array_equal(p, derangement(n, seed=7))
    assert not np.array_equal(derangement(50, 1), derangement(50, 2))
    with pytest.raises(ValueError):
        derangement(1, 0)


def test_other_clip_partners_come_from_the_same_song_when_it_has_other_clips():
    ids = ["a/w0", "a/w1", "a/w2", "b/w0", "b/w1", "c/w0", "d/w0", "e/w0"]
    p = song_derangement(ids, seed=3)
    assert np.all(p != np.arange(len(ids)))
    for i, j in enumerate(p):
        if ids[i][0] in "ab":
            assert ids[j][0] == ids[i][0]       # same song
        else:
            assert ids[j][0] in "cde"           # the lone clips are paired among themselves
    alone = song_derangement(["a/w0", "a/w1", "z"], seed=0)
    assert alone[2] in (0, 1) and set(alone[:2]) == {0, 1}


def test_shaped_noise_has_the_drums_long_term_spectrum_and_baselines_are_complete():
    params = MelParams()
    rng = np.random.default_rng(0)
    # "drums": loud low bins, quiet high bins, hits every 20 frames
    true = np.zeros((params.n_mels, 300), np.uint8)
    true[:, ::20] = np.linspace(220, 60, params.n_mels).astype(np.uint8)[:, None]
    true += rng.integers(0, 5, true.shape).astype(np.uint8)
    noise = shaped_noise_image(true, params, seed=3)
    power = lambda img: (10 ** ((params.db_min + img * params.db_step) / 10)).mean(axis=1)
    ratio = power(noise) / power(true)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.35)
    from infer.features import autocorr

    frames = lambda img: img.astype(float).mean(axis=0)
    assert autocorr(frames(true), 20) > 0.9 and abs(autocorr(frames(noise), 20)) < 0.3  # noise, no rhythm
    images = baseline_images("c1", true, true[::-1], true[:, :100], params, seed=0)
    assert set(images) == {TRUE, OTHER, BASS, NOISE, SILENCE}
    assert images[OTHER].shape == true.shape and not images[SILENCE].any()
    assert set(baseline_images("c1", true, None, None, params, 0)) == {TRUE, NOISE, SILENCE}


# ---------------------------------------------------------------- sanity ladder


def test_sanity_ladder_passes_a_metric_that_ranks_real_drums_and_fails_one_that_prefers_the_bass():
    rng = np.random.default_rng(0)
    rows = []
    means = {"good": {TRUE: 1.0, OTHER: 0.5, NOISE: 0.0, SILENCE: 0.0, BASS: 0.1},
             "bassy": {TRUE: 0.6, OTHER: 0.3, NOISE: 0.0, SILENCE: 0.0, BASS: 1.0},
             "level_diff_db": {TRUE: 0.0, OTHER: -3.0, NOISE: 9.0, SILENCE: -30.0, BASS: -12.0}}
    for i in range(20):
        for label in (TRUE, OTHER, NOISE, SILENCE, BASS):
            rows.append({"set": label, "clip_id": f"c{i}", "baseline": True, "drums_active": True,
                         **{m: v[label] + 0.05 * rng.standard_normal() for m, v in means.items()}})
    rows.append({"set": "model", "clip_id": "c0", "baseline": False, "drums_active": True,
                 "good": 9.0, "bassy": 9.0, "level_diff_db": 0.0})       # generated sets do not count
    ladder = sanity_ladder(pd.DataFrame(rows), ["good", "bassy", "level_diff_db"])
    assert ladder["good"]["passes"] and ladder["level_diff_db"]["passes"]
    assert not ladder["bassy"]["passes"]
    bass_rung = [r for r in ladder["bassy"]["rungs"] if r["lower"] == BASS][0]
    assert bass_rung["win_rate"] == 0.0 and not bass_rung["means_ordered"]
    assert passing_metrics(ladder) == ["good", "level_diff_db"]
    assert ladder["good"]["clips"] == 20
    no_baselines = pd.DataFrame([r for r in rows if not r["baseline"]])
    assert sanity_ladder(no_baselines, ["good"]) is None


# ---------------------------------------------------------------- annotations, before Ray


def test_annotations_naming_no_scored_clip_are_refused_before_the_job_runs(tmp_path):
    from infer.grader import AnnotationError, read_annotations
    from infer.score import _check_annotated_ids
    from infer.sources import AudioClip

    header = "clip_id,rater,quality,contamination,credibility,time\n"
    sets = [GeneratedSet("cyclegan", "gen", [AudioClip("test/t1", "x"), AudioClip("test/t2", "y")],
                         matches={"test/t1": "test/t1", "test/t2": "test/t2"})]
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(header + "nope-1,r1,5,5,5,5\nnope-2,r1,6,6,6,6\n")
    with pytest.raises(ScoreError, match="none of its clip ids") as err:
        _check_annotated_ids(read_annotations(str(unknown)), sets, str(unknown))
    assert "nope-1" in str(err.value) and "test/t1" in str(err.value)
    known = tmp_path / "known.csv"
    known.write_text(header + "test/t1,r1,5,5,5,5\nnope-2,r1,6,6,6,6\n")
    _check_annotated_ids(read_annotations(str(known)), sets, str(known))  # one match is enough
    blank = tmp_path / "blank.csv"
    blank.write_text(header + "test/t1,r1,5,5,5,5\n ,r1,6,6,6,6\n")
    with pytest.raises(AnnotationError, match="blank clip_id"):
        read_annotations(str(blank))
