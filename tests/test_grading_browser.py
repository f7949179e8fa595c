"""The grading loop in a real headless browser: grade.html -> two raters' CSVs -> score -> agreement, grader.

Debian's Chromium through Selenium, offline (tests/setup_browser.sh); without it the test
skips and says why.  Screenshots of grade.html and of the report are kept in the test's
tmp folder (grade.png, report.png).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.browser import headless_chromium, lithium_clips

CLIPS = 4
SECONDS = 3.0
MODEL = "cyclegan"
DIMS = ("quality", "contamination", "credibility", "time")
# Rater A's grade range per set: the anchors where a listener would put them.
RANGES = {"true-drums": (8, 9), "other-clip": (6, 7), MODEL: (4, 6), "shaped-noise": (0, 2), "silence": (0, 2),
          "bass-copy": (1, 3)}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with headless_chromium(tmp_path_factory.mktemp("downloads")) as driver:
        yield driver


@pytest.fixture(scope="module")
def scored(tmp_path_factory, ray_local):
    """score with --grading-sheet: every clip of the model and of the 5 baselines (24) on the sheet."""
    from cycledrums_cli import main
    from infer.inception import save_random_weights

    tmp = tmp_path_factory.mktemp("grading")
    ref = lithium_clips(tmp / "ref", CLIPS, SECONDS)
    gen = tmp / "gen"
    for drums in ref.glob("*/*/drums.wav"):   # the "model": the true drums a quarter beat late, quieter
        audio, rate = sf.read(drums)
        (gen / drums.parent.parent.name).mkdir(parents=True, exist_ok=True)
        sf.write(gen / drums.parent.parent.name / f"{drums.parent.name}.wav", 0.5 * np.roll(audio, rate // 4), rate)
    weights = save_random_weights(str(tmp / "inception.pth"), seed=0)
    out = tmp / "scores"
    assert main(["score", f"{MODEL}={gen}", str(ref), str(out), "--inception-weights", weights,
                 "--report-clips", "1", "--grading-sheet", "24", "--seed", "5"]) == 0
    return {"tmp": tmp, "ref": ref, "gen": gen, "out": out, "weights": weights}


def _grade(browser, token: str, grades: dict) -> None:
    for dim in DIMS:
        box = browser.find_element("css selector", f'input[data-id="{token}"][data-dim="{dim}"]')
        box.clear()
        box.send_keys(str(grades[dim]))


def _rater_grades(key: pd.DataFrame, jitter_seed: int | None) -> dict[str, dict]:
    """Rater A: the set's range; rater B: A's grades with seeded +-1 jitter."""
    rng = np.random.default_rng(100)
    jitter = np.random.default_rng(jitter_seed) if jitter_seed is not None else None
    out = {}
    for token, label in zip(key["id"], key["set"]):
        lo, hi = RANGES[label]
        grades = {d: int(rng.integers(lo, hi + 1)) for d in DIMS}
        if jitter is not None:
            grades = {d: int(np.clip(g + jitter.integers(-1, 2), 0, 9)) for d, g in grades.items()}
        out[token] = grades
    return out


def _progress(browser) -> str:
    return browser.find_element("id", "progress").text


def _download(browser, name_part: str) -> Path:
    before = set(browser.downloads.iterdir())
    browser.find_element("id", "download").click()
    for _ in range(100):
        new = [f for f in set(browser.downloads.iterdir()) - before
               if f.suffix == ".csv" and name_part in f.name]
        if new:
            time.sleep(0.2)
            return new[0]
        time.sleep(0.1)
    raise AssertionError(f"no CSV downloaded; message: {browser.find_element('id', 'message').text}")


@pytest.mark.timeout(900)
def test_grading_sheet_blind_two_raters_to_agreement_and_grader(browser, scored):
    from cycledrums_cli import main

    out = scored["out"]
    page = out / "grade.html"
    summary = json.loads((out / "summary.json").read_text())
    sheet = summary["grading_sheet"]
    assert sheet["clips"] == 24 and set(sheet["per_set"].values()) == {CLIPS}   # every set, every clip
    key = pd.read_csv(out / "grading_key.csv", dtype=str)
    assert len(key) == 24 and key["id"].is_unique and set(key["set"]) == set(RANGES)

    # Blind: nothing in the page, its ids or its audio paths names a set or a clip.
    source = page.read_text()
    linked = re.findall(r'src="([^"]+)"', source)
    assert len(linked) == 24 * 3 and all(re.fullmatch(r"grading/[0-9a-f]{10}/(bass|drums|mix)\.ogg", p)
                                         for p in linked)
    on_disk = {str(f.relative_to(out)) for f in (out / "grading").rglob("*") if f.is_file()}
    assert on_disk == set(linked)
    secrets = set(RANGES) | {f"lithium/c{k}" for k in range(CLIPS)} | {"lithium", "grading_key", str(out)}
    assert not [s for s in secrets if s in source], [s for s in secrets if s in source]
    assert "late" not in source.lower()

    browser.get(page.as_uri())
    visible = browser.find_element("tag name", "body").text
    assert not [s for s in secrets if s in visible]
    tokens = browser.execute_script("return Array.from(document.querySelectorAll('.clip')).map(c => c.dataset.id);")
    assert sorted(tokens) == sorted(key["id"]) and tokens != list(key["id"].sort_values())
    assert _progress(browser) == "0 of 24 graded"
    durations = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.querySelectorAll('audio')).map(a => new Promise(resolve => {
            a.preload = 'metadata';
            a.addEventListener('loadedmetadata', () => resolve(a.duration));
            a.addEventListener('error', () => resolve(-1));
            a.load();
        }))).then(done);""")
    assert len(durations) == 72 and all(abs(d - SECONDS) < 0.2 for d in durations), durations[:6]

    csvs = []
    for rater, jitter_seed in (("Rater A", None), ("Rater B", 7)):
        grades = _rater_grades(key, jitter_seed)
        browser.find_element("id", "rater").send_keys(rater)
        for token in tokens[:12]:
            _grade(browser, token, grades[token])
        assert _progress(browser) == "12 of 24 graded"
        browser.refresh()   # midway: nothing is lost
        assert _progress(browser) == "12 of 24 graded"
        assert browser.find_element("id", "rater").get_attribute("value") == rater
        kept = browser.find_element("css selector", f'input[data-id="{tokens[3]}"][data-dim="time"]')
        assert kept.get_attribute("value") == str(grades[tokens[3]]["time"])
        for token in tokens[12:]:
            _grade(browser, token, grades[token])
        assert _progress(browser) == "24 of 24 graded"
        if rater == "Rater A":
            browser.save_screenshot(str(scored["tmp"] / "grade.png"))
        path = _download(browser, rater.replace(" ", "_"))
        got = pd.read_csv(path, dtype={"clip_id": str})
        assert list(got.columns) == ["clip_id", "rater", *DIMS, "sheet"] and len(got) == 24
        assert set(got["rater"]) == {rater} and set(got["sheet"]) == {sheet["sheet"]}
        assert all(got.set_index("clip_id").loc[t, d] == grades[t][d] for t in tokens for d in DIMS)
        csvs.append(path)
        browser.find_element("id", "reset").click()   # the next rater, same browser
        browser.switch_to.alert.accept()
        assert _progress(browser) == "0 of 24 graded"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    # Grades in, numbers out.
    out2 = scored["tmp"] / "graded"
    assert main(["score", f"{MODEL}={scored['gen']}", str(scored["ref"]), str(out2), "--inception-weights",
                 scored["weights"], "--report-clips", "1", "--seed", "5", "--annotations", str(csvs[0]),
                 "--annotations", str(csvs[1]), "--grading-key", str(out / "grading_key.csv")]) == 0
    result = json.loads((out2 / "summary.json").read_text())
    human = result["human_grades"]
    agreement = human["agreement"]
    print("\nraters' Pearson r (A vs B):", {d: m[0][1] for d, m in agreement["per_dimension"].items()},
          "overall", agreement["overall"][0][1])
    print("mean grade per set:", human["anchors"]["means"])
    assert agreement["raters"] == ["Rater A", "Rater B"] and agreement["clips_in_common"][0][1] == 24
    assert agreement["overall"][0][1] > 0.9
    assert all(m[0][1] > 0.8 for m in agreement["per_dimension"].values())
    assert human["anchors"]["true_drums_top"] and human["anchors"]["noise_silence_bottom"]
    assert set(human["grade_distribution"]) == set(RANGES) and human["clips_graded"] == 24
    grader = result["grader"]
    print(f"grader: cross-validated accuracy {grader['cv_accuracy']:.3f} on {grader['trained_on']} clips "
          f"(majority {grader['majority_baseline']:.3f}, chance 0.25); confusion {grader['confusion_matrix']}")
    assert grader["trained_on"] == 24 and grader["cv_accuracy"] > max(0.25, grader["majority_baseline"])
    for label, s in list(result["sets"].items()) + list(result["baselines"].items()):
        assert sum(s["predicted_bucket_histogram"]) == CLIPS, label   # the grader on every scored clip
    clips = pd.read_csv(out2 / "clips.csv")
    assert clips["grade"].notna().sum() == 24 and clips.loc[clips["baseline"], "grade"].notna().all()
    assert {"grade_quality", "bucket_pred", "prob_3"} <= set(clips.columns)
    assert (out2 / "grader.json").exists() and (out2 / "grader.npz").exists()
    report = (out2 / "report.html").read_text()
    assert "Human grades and the grader" in report and "Rater B" in report

    # The report fits a 1400 px screen: no spectrogram cut off at the right.
    browser.get((out2 / "report.html").as_uri())
    fit = browser.execute_script("""
        const w = document.documentElement.clientWidth;
        const right = Math.max(...Array.from(document.querySelectorAll('img.spec'))
                                 .map(i => i.getBoundingClientRect().right));
        return [w, document.documentElement.scrollWidth, right];""")
    assert fit[1] <= fit[0] and fit[2] <= fit[0], fit
    browser.save_screenshot(str(scored["tmp"] / "report.png"))
