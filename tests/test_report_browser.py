"""score's report.html in a real headless browser (Debian's Chromium through Selenium, offline).

The browser comes from tests/setup_browser.sh (apt-get, best effort); without it, or
without the selenium package, the test skips and says why.  The screenshot of the
page is kept in the test's tmp folder (report.png).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from tests.browser import headless_chromium, lithium_clips


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(None, "--autoplay-policy=no-user-gesture-required") as driver:
        yield driver


@pytest.fixture(scope="module")
def report(tmp_path_factory, ray_local):
    """A real score run (3 Lithium clips, the bass-shifted drums as the 'model', all baselines)."""
    from cycledrums_cli import main
    from infer.inception import save_random_weights

    tmp = tmp_path_factory.mktemp("report")
    ref = lithium_clips(tmp / "ref", n=3, seconds=3.9)
    gen = tmp / "gen"
    for drums in ref.glob("*/*/drums.wav"):
        audio, rate = sf.read(drums)
        (gen / drums.parent.parent.name).mkdir(parents=True, exist_ok=True)
        sf.write(gen / drums.parent.parent.name / f"{drums.parent.name}.wav", np.roll(audio, rate // 4), rate)
    weights = save_random_weights(str(tmp / "inception.pth"), seed=0)
    out = tmp / "scores"
    with pytest.MonkeyPatch.context() as patch:  # the clips' media in Ray tasks, as for a large report
        patch.setattr("infer.html_report.IN_PROCESS_ROWS", 0)
        assert main(["score", f"late={gen}", str(ref), str(out), "--inception-weights", weights,
                     "--report-clips", "3", "--inception-batch", "8"]) == 0
    return out


@pytest.mark.timeout(900)
def test_report_plays_shows_and_sorts_in_chromium(browser, report):
    page = report / "report.html"
    summary = json.loads((report / "summary.json").read_text())
    assert str(page) in summary["outputs"]
    total = sum(f.stat().st_size for f in report.rglob("*") if f.is_file())
    assert total < 50e6
    html = page.read_text()
    assert "file://" not in html and str(report) not in html  # relative links only: works from S3 too
    linked = set(re.findall(r'(?:src|href)="(media/[^"]+)"', html))
    on_disk = {str(f.relative_to(report)) for f in (report / "media").rglob("*") if f.is_file()}
    assert linked and linked == on_disk  # the tasks wrote every file the page links, and nothing else

    browser.get(page.as_uri())
    durations = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const audios = Array.from(document.querySelectorAll('audio'));
        Promise.all(audios.map(a => new Promise(resolve => {
            if (a.readyState >= 1) return resolve([a.getAttribute('src'), a.duration]);
            a.addEventListener('loadedmetadata', () => resolve([a.getAttribute('src'), a.duration]));
            a.addEventListener('error', () => resolve([a.getAttribute('src'), -1]));
            a.load();
        }))).then(done);""")
    # 7 sets (1 generated + 5 baselines... bass-copy included) x 3 clips, each with its players
    assert len(durations) >= 6 * 3 * 2
    bad = [(src, d) for src, d in durations if not d or d <= 0]
    assert not bad, f"audio that does not decode: {bad[:5]}"
    assert all(abs(d - 3.9) < 0.2 for _, d in durations), durations[:5]

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
    assert len(images) >= 6 * 3
    assert all(complete and width > 0 for _, complete, width in images), [i for i in images if not i[2]][:5]

    # Sorting: click the rank-score header of the first clip table, twice (ascending, then descending).
    def column(table_index: int, col: int) -> list[float]:
        return browser.execute_script(
            "const t = document.querySelectorAll('table.clips')[arguments[0]];"
            "return Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[arguments[1]].textContent));",
            table_index, col)

    header = browser.find_elements("css selector", "table.clips")[0].find_elements("css selector", "th")[2]
    header.click()
    ascending = column(0, 2)
    header.click()
    descending = column(0, 2)
    assert ascending == sorted(ascending) and descending == sorted(descending, reverse=True)
    assert ascending != descending

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.save_screenshot(str(report.parent / "report.png"))
    assert (report.parent / "report.png").stat().st_size > 10_000
