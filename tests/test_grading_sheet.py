"""grade.html's sample and id key, the CLI's refusal of a pickled grader, drums_mel.png's axes, the grader in Ray tasks, evaluate --grading-sheet."""
from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from infer.grading_sheet import GradingKeyError, grading_sample, map_sheet_ids, sheet_html

RATE = 22050


def _table(labels: dict[str, int]) -> pd.DataFrame:
    rows = [{"set": label, "clip_id": f"song{k}/w{k:04d}"} for label, n in labels.items() for k in range(n)]
    return pd.DataFrame(rows)


def test_grading_sample_draws_across_every_set_seeded_and_shuffled():
    labels = {"cyclegan": 30, "pix2pix": 30, "true-drums": 30, "shaped-noise": 30, "silence": 2}
    table = _table(labels)
    sample = grading_sample(table, list(labels), 12, seed=1)
    assert len(sample) == len(set(sample)) == 12
    counts = pd.Series([s for s, _ in sample]).value_counts()
    assert set(counts.index) == set(labels) and counts.max() - counts.min() <= 1   # in turn from each set
    assert grading_sample(table.sample(frac=1, random_state=3), list(labels), 12, seed=1) == sample  # row order
    assert grading_sample(table, list(labels), 12, seed=2) != sample
    assert [s for s, _ in sample] != sorted(s for s, _ in sample)                     # shuffled, not by set
    everything = grading_sample(table, list(labels), 1000, seed=1)
    assert len(everything) == len(table)                                            # N past the clips: all


def test_annotations_from_a_sheet_map_back_through_its_key(tmp_path):
    key = tmp_path / "grading_key.csv"
    key.write_text("id,sheet,set,clip_id\naaaa000001,s1,cyclegan,\"a,b/w0001\"\nbbbb000002,s1,silence,x/w0002\n")
    grades = pd.DataFrame({"clip_id": ["bbbb000002", "aaaa000001"], "rater": ["A", "A"], "quality": [1, 7],
                           "contamination": [1, 7], "credibility": [1, 7], "time": [1, 7], "sheet": ["s1", "s1"]})
    mapped = map_sheet_ids(grades, str(key))
    assert mapped[["set", "clip_id"]].values.tolist() == [["silence", "x/w0002"], ["cyclegan", "a,b/w0001"]]
    with pytest.raises(GradingKeyError, match="sheet"):
        map_sheet_ids(grades.assign(sheet="other"), str(key))
    with pytest.raises(GradingKeyError, match="not in"):
        map_sheet_ids(grades.assign(clip_id=["cccc", "aaaa000001"]), str(key))
    with pytest.raises(GradingKeyError, match="--grading-key"):
        map_sheet_ids(grades, str(tmp_path / "missing.csv"))


def test_sheet_page_shows_only_opaque_ids_and_the_four_dimensions():
    page = sheet_html("abc123", [("0123456789", {"bass": "grading/0123456789/bass.ogg",
                                                 "drums": "grading/0123456789/drums.ogg",
                                                 "mix": "grading/0123456789/mix.ogg"})])
    for dim in ("quality", "contamination", "credibility", "time"):
        assert f'data-dim="{dim}"' in page
    assert "localStorage" in page and "Download CSV" in page and "1 of 1" in page
    assert "http" not in page.replace("http-equiv", "")      # no network, works from file://


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_score_refuses_a_pickled_grader_in_one_line_before_ray(tmp_path, monkeypatch, capsys):
    import joblib

    from cycledrums_cli import main
    from infer.inception import save_random_weights

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the grader was not checked before the job")
    monkeypatch.setattr("cluster.ray_runtime.init_ray", refuse)
    ref = tmp_path / "ref"
    for clip in ("a", "b"):
        (ref / clip).mkdir(parents=True)
        sf.write(ref / clip / "drums.wav", np.zeros(RATE, np.float32), RATE)
    weights = save_random_weights(str(tmp_path / "inception.pth"), seed=0)
    marker = tmp_path / "pwned"
    joblib.dump(_Payload(str(marker)), tmp_path / "grader.joblib")
    (tmp_path / "renamed.json").write_bytes(pickle.dumps(_Payload(str(marker))))
    for name in ("grader.joblib", "renamed.json"):
        rc = main(["score", str(ref), str(ref), str(tmp_path / "out"), "--inception-weights", weights,
                   "--grader", str(tmp_path / name)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "pickle" in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not marker.exists()


def test_drums_mel_png_has_the_reports_axes_and_colour_bar():
    from PIL import Image

    from infer.render import mel_png_bytes
    from pipelines.mel import MelParams

    image = (np.random.default_rng(0).random((256, 300)) * 250).astype(np.uint8)
    png = Image.open(io.BytesIO(mel_png_bytes(image, MelParams()))).convert("RGB")
    pixels = np.asarray(png).astype(int)
    assert png.width > 300 + 100 and png.height < 256            # a figure with axes, not the bare image
    assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 40).mean() > 0.1   # colour map, not greyscale


@pytest.mark.timeout(600)
def test_the_grader_on_many_clips_runs_in_ray_tasks_with_the_same_predictions(ray_local, monkeypatch):
    import ray.data

    from infer import score_summary
    from infer.grader import train_grader

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    grader = train_grader(rng.standard_normal((40, 3)) + y[:, None], y, ["a", "b", "c"])
    x = rng.standard_normal((5000, 3)) * 2
    blocks = []
    from_arrow = ray.data.from_arrow
    monkeypatch.setattr(ray.data, "from_arrow", lambda tables: blocks.append(len(tables)) or from_arrow(tables))
    monkeypatch.setattr(score_summary, "PREDICT_BLOCK", 1000)
    buckets, probs = score_summary.predict_clips(grader, x)   # 5,000 clips: the Ray path
    assert blocks == [5]
    expected_buckets, expected_probs = grader.predict(x)
    np.testing.assert_array_equal(buckets, expected_buckets)   # every clip, back in the table's order
    np.testing.assert_array_equal(probs, expected_probs)
    score_summary.predict_clips(grader, x[:4999])             # below the threshold: in process
    assert blocks == [5]


@pytest.mark.timeout(900)
def test_evaluate_writes_a_grading_sheet_with_audio_for_every_sampled_clip(ray_local, tmp_path):
    from cycledrums_cli import main
    from infer.inception import save_random_weights
    from pipelines.synth import write_dataset
    from tests.test_generate import write_tiny_checkpoint

    write_dataset(tmp_path / "synth", tracks=8, seconds=7.0, seed=3)
    checkpoint = str(write_tiny_checkpoint(tmp_path / "ckpt"))
    weights = save_random_weights(str(tmp_path / "inception.pth"), seed=0)
    out = tmp_path / "out"
    assert main(["evaluate", checkpoint, str(tmp_path / "synth" / "test"), str(out), "--inception-weights",
                 weights, "--griffin-lim-iters", "4", "--report-clips", "1", "--grading-sheet", "8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    sheet = summary["grading_sheet"]
    key = pd.read_csv(out / "grading_key.csv", dtype=str)
    assert sheet["clips"] == len(key) == 8 and sheet["left_out"] == 0
    assert key["set"].value_counts().get("cyclegan", 0) >= 1 and key["set"].nunique() == 6
    page = (out / "grade.html").read_text()
    for token in key["id"]:
        for name in ("bass", "drums", "mix"):
            path = out / "grading" / token / f"{name}.ogg"
            assert f'src="grading/{token}/{name}.ogg"' in page and sf.info(str(path)).duration > 6.5
    # the sampled model clips got their audio generated, beside the report's clips
    sampled = set(key.loc[key["set"] == "cyclegan", "clip_id"])
    written = {p.parent.name for p in (out / "audio" / "cyclegan").glob("*/drums.wav")}
    assert sampled <= written
