"""Headless Chromium for the page tests (report.html, grade.html), and the Lithium clips they score.

Debian's chromium and chromedriver (tests/setup_browser.sh installs them with apt-get); Selenium
gets the driver's path, so Selenium Manager never tries to download one.
"""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile as sf

TESTS = Path(__file__).parent
RATE = 22050


@contextmanager
def headless_chromium(downloads: Path | None = None, *extra_args: str):
    """A Chrome webdriver at 1400x1000 that reads file:// pages; with `downloads`, files the page
    downloads land there (driver.downloads).  Skips the test where Chromium cannot be installed."""
    setup = subprocess.run(["sh", str(TESTS / "setup_browser.sh")], capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        pytest.skip(f"no headless Chromium: {setup.stderr.strip() or 'tests/setup_browser.sh failed'}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                "--window-size=1400,1000", *extra_args):
        options.add_argument(arg)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)  # never downloads
    if downloads is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.downloads = downloads
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def lithium_clips(root: Path, n: int, seconds: float) -> Path:
    """`n` clips of the Lithium excerpt in tests/data as a reference set: root/lithium/c<k>/{drums,bass}.wav
    (the first clip-length skipped: the bass rests there)."""
    from pipelines.audio import load_audio

    drums = load_audio(str(TESTS / "data" / "lithium_drums_31s.ogg"), RATE).numpy()
    bass = load_audio(str(TESTS / "data" / "lithium_bass_31s.ogg"), RATE).numpy()
    size = int(seconds * RATE)
    for k in range(n):
        start = (k + 1) * size
        folder = root / "lithium" / f"c{k}"
        folder.mkdir(parents=True)
        sf.write(folder / "drums.wav", drums[start:start + size], RATE)
        sf.write(folder / "bass.wav", bass[start:start + size], RATE)
    return root
