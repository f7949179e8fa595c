"""The repository stands alone: nothing it ships points outside it.

A fresh clone with nothing beside it must pass `make test` (CI runs exactly that), and a user who
clones it must find every link and path the docs and code mention.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}
# Built by joining, so this file does not match its own patterns.
OUTSIDE = [re.compile(p) for p in (r"\.\./" + "shared", "/work" + "/")]
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def text_files() -> list[Path]:
    return [p for p in tracked_files()
            if p.suffix in TEXT_SUFFIXES and p.is_file() and p.stat().st_size < 2_000_000]


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_markdown_links_resolve_inside_the_repository():
    broken = []
    for path in text_files():
        if path.suffix != ".md":
            continue
        for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, "\n".join(broken)


def test_test_data_has_attribution():
    readme = (ROOT / "tests" / "data" / "README.md").read_text(encoding="utf-8")
    data_files = [p for p in (ROOT / "tests" / "data").rglob("*")
                  if p.is_file() and p.name != "README.md" and p in set(tracked_files())]
    assert data_files
    # Each file is named in the README, directly or by a folder it lies in.
    for p in data_files:
        data_root = ROOT / "tests" / "data"
        names = {p.name} | {part + "/" for part in p.relative_to(data_root).parts[:-1]}
        assert any(n in readme for n in names), f"{p.relative_to(ROOT)} has no attribution line"
        assert p.stat().st_size < 1_500_000, f"{p.relative_to(ROOT)} is too large for the repository"
