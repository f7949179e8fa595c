"""The one place where a name (track id, file path, folder) becomes an id used in output paths.

Every job names its outputs with `clip_id` (generate's clip folders, score's matching,
the Parquet window clips) or `file_stem` (prepare's per-track file names), so an id is
the same whichever job computes it.

Rules:
- Unicode-safe and readable: names are NFC-normalised (macOS writes decomposed
  accents, Linux keeps what it is given) and every letter or digit of any script is kept,
  so "東京/bass.wav" gives "東京" and "Café 01" gives "Café 01".
- Safe as a relative path on every filesystem and object store: no empty, "." or ".."
  parts, no control characters, none of  \\ : * ? " < > | #  and no leading or trailing
  spaces or dots in a part.
- Unique: when a part had to be changed (a character replaced, or the part shortened),
  a short hash of the original part is appended ("a:b" -> "a_b~5d6c1a2e"), so two
  different names never give the same id ("Café 01" and "Cafè 01" stay apart, and
  "a:b" never meets "a_b").
- Stable: the id depends only on the name itself, not on which other names are in the job.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

from cluster.errors import UserError

MAX_PART_CHARS = 100  # keeps a part well under the 255-byte file-name limit in UTF-8
HASH_MARK = "~"
# Replaced in clip ids: characters that are unsafe in a path on some system, or that
# the jobs use as separators (`#` joins a Parquet source and its window in `input`).
_UNSAFE = re.compile(r'[\\:*?"<>|#~\x00-\x1f\x7f]')
# File stems (prepare) are stricter: word characters of any script, '.', '-'.
_FILE_UNSAFE = re.compile(r"[^\w.-]+")


class ClipIdError(UserError):
    """A name that gives no usable id (empty, or only separators and dots)."""


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _clean_part(part: str) -> str:
    readable = _UNSAFE.sub("_", part)
    readable = "".join("_" if unicodedata.category(c).startswith("C") else c for c in readable)
    readable = readable.strip(" .")[:MAX_PART_CHARS].rstrip(" .")
    if readable != part or not readable:
        readable = f"{readable or '_'}{HASH_MARK}{_digest(part)}"
    return readable


def clip_id(name: str) -> str:
    """A name or relative path ('album/Café 01') -> a unique, readable, path-safe clip id."""
    text = unicodedata.normalize("NFC", str(name)).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ClipIdError(f"cannot make a clip id from {name!r}: it has no name part")
    return "/".join(_clean_part(p) for p in parts)


def window_clip_id(track_id: str, window: int) -> str:
    """The clip id of one window of a prepared track: '<clip id of the track>/w0002'."""
    return f"{clip_id(track_id)}/w{int(window):04d}"


def file_stem(name: str) -> str:
    """A flat, readable file name stem for `name` (no folders), plus a hash of the exact name.

    Always hashed: prepare's file names must be unique without knowing the other tracks,
    and stay the same across runs (they are the 'done' markers).
    """
    text = unicodedata.normalize("NFC", str(name))
    readable = _FILE_UNSAFE.sub("_", text).strip("._-")[:MAX_PART_CHARS] or "track"
    return f"{readable}-{hashlib.sha1(str(name).encode('utf-8')).hexdigest()[:10]}"
