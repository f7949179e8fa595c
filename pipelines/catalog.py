"""The song catalog `cycledrums prepare` works through: which tracks, where their audio is, which split.

Two input layouts (detected from what INPUT holds, or forced):

- *stems*: musdb18-HQ style, ``<split>/<track>/{bass,drums,...}.wav|.flac|.ogg|.mp3``: already
  separated.
  The nearest ``train`` / ``test`` folder above a track gives its split (a hash of the track id
  when there is none).
- *mixes*: any tree of full songs (MP3, OGG, WAV, FLAC), optionally with FMA's ``tracks.csv``:
  ``genres`` keeps songs of those top-level genres, albums with the word "live" in the title are
  dropped (as the paper did), and the split is a deterministic hash of the track id.

A track id is the track's path relative to INPUT (its folder for stems, the file without its
extension for mixes), so it is unique and the same on every run.  Listing a catalog touches only
names, never audio bytes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
from dataclasses import dataclass, field

from cluster.errors import UserError

from pipelines.storage import fsspec_filesystem, is_remote, read_bytes

LAYOUTS = ("stems", "mixes")
# In order of preference: a lossless copy wins when a folder holds a stem twice.
STEM_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MIX_EXTENSIONS = (".mp3", ".ogg", ".wav", ".flac")
NEEDED_STEMS = ("bass", "drums")
SPLIT_FOLDERS = ("train", "test")
DEFAULT_TEST_FRACTION = 0.1
LIVE_ALBUM = re.compile(r"\blive\b", re.IGNORECASE)


class CatalogError(UserError):
    """INPUT cannot be turned into a catalog (nothing there, bad metadata, bad option)."""


@dataclass
class Track:
    track_id: str
    split: str
    path: str  # the track folder (stems) or song file (mixes), as a URI or local path
    sources: dict[str, str] = field(default_factory=dict)  # "bass"/"drums" or "mix" -> URI
    error: str | None = None  # set when the catalog already knows the track is unusable


@dataclass
class Catalog:
    layout: str
    tracks: list[Track]
    filtered: list[tuple[str, str]]  # (track id, why it was left out): genre, live album, no metadata


def hash_split(track_id: str, test_fraction: float) -> str:
    """'test' for a deterministic `test_fraction` of track ids, else 'train' (same on every machine)."""
    digest = hashlib.sha256(track_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


def _uri(fs, path: str) -> str:
    """A path from `fs.find` back to something `fsspec_filesystem` opens (local paths stay plain)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return path
    return fs.unstrip_protocol(path)


def _list_files(input_uri: str, s3_endpoint_url: str | None) -> tuple[object, str, list[str]]:
    from pipelines.storage import storage_errors

    fs, root = fsspec_filesystem(input_uri, s3_endpoint_url)
    root = root.rstrip("/")
    with storage_errors("listing", input_uri):
        if not fs.exists(root):
            raise CatalogError(f"input not found: {input_uri}")
        if fs.isfile(root):
            raise CatalogError(f"input must be a folder (or prefix) of songs, got a file: {input_uri}")
        if is_remote(input_uri):
            files = fs.find(root)
        else:
            files = _walk_local(root)
    files = sorted(p for p in files if not posixpath.basename(p).startswith("."))
    return fs, root, files


def _walk_local(root: str) -> list[str]:
    """Files under a local folder, following symlinked folders (a symlinked split folder is
    common), visiting each real folder once (a symlink loop is skipped with a warning)."""
    import logging
    import os

    log = logging.getLogger(__name__)
    files, seen, stack = [], set(), [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            log.warning("%s: already listed (symlink loop?), skipped", folder)
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            log.warning("%s: cannot list (%s), skipped", folder, err.strerror or err)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                    continue
                if entry.is_file(follow_symlinks=True):
                    files.append(entry.path)
                    continue
            except OSError as err:  # ELOOP: a symlink to itself
                log.warning("%s: %s, skipped", entry.path, err.strerror or err)
                continue
            if entry.is_symlink():
                log.warning("%s: broken symlink, skipped", entry.path)
    return files


def _relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if root else path


def _split_ext(name: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(name)
    return stem, ext.lower()


def detect_layout(relative_files: list[str]) -> str:
    """'stems' when any folder holds bass/drums stem files, 'mixes' when there is other audio."""
    has_audio = False
    for rel in relative_files:
        stem, ext = _split_ext(posixpath.basename(rel))
        if ext in STEM_EXTENSIONS and stem.lower() in NEEDED_STEMS and "/" in rel:
            return "stems"
        has_audio = has_audio or ext in MIX_EXTENSIONS
    if has_audio:
        return "mixes"
    raise CatalogError("no audio files (" + ", ".join(MIX_EXTENSIONS) + ") found in the input")


def ext_rank(path: str) -> int:
    """A stem file's place in STEM_EXTENSIONS (lower = preferred)."""
    return STEM_EXTENSIONS.index(_split_ext(path)[1])


def _folder_split(rel_folder: str, test_fraction: float) -> str:
    for part in reversed(rel_folder.split("/")):
        if part.lower() in SPLIT_FOLDERS:
            return part.lower()
    return hash_split(rel_folder, test_fraction)


def stems_catalog(fs, root: str, files: list[str], test_fraction: float) -> Catalog:
    folders: dict[str, dict[str, str]] = {}
    for path in files:
        rel = _relative(path, root)
        stem, ext = _split_ext(posixpath.basename(rel))
        if ext in STEM_EXTENSIONS and "/" in rel:
            stems = folders.setdefault(posixpath.dirname(rel), {})
            known = stems.get(stem.lower())
            if known is None or ext_rank(path) < ext_rank(known):
                stems[stem.lower()] = path
    tracks = []
    for rel_folder, stems in sorted(folders.items()):
        if not any(s in stems for s in NEEDED_STEMS):
            continue  # a folder of other audio (e.g. only mixture.wav): not a stems track
        missing = [s for s in NEEDED_STEMS if s not in stems]
        track = Track(
            track_id=rel_folder,
            split=_folder_split(rel_folder, test_fraction),
            path=_uri(fs, posixpath.join(root, rel_folder)),
            sources={s: _uri(fs, stems[s]) for s in NEEDED_STEMS if s in stems},
        )
        if missing:
            track.error = (f"no {' or '.join(missing)} stem ({'/'.join(STEM_EXTENSIONS)}) "
                           "in the track folder")
        tracks.append(track)
    return Catalog("stems", tracks, [])


@dataclass
class FmaTrack:
    genre_top: str
    album_title: str


def read_fma_tracks(text_stream) -> dict[int, FmaTrack]:
    """FMA's tracks.csv (three header rows: section, field, 'track_id') -> {track id: genre, album}.

    Only the two columns used are kept, row by row, so the full 100k-track file stays small.
    """
    reader = csv.reader(text_stream)
    try:
        sections, fields_, _ = next(reader), next(reader), next(reader)
    except StopIteration:
        raise CatalogError("tracks.csv: expected FMA's three header rows") from None
    columns = list(zip(sections, fields_))
    try:
        genre_col = columns.index(("track", "genre_top"))
        album_col = columns.index(("album", "title"))
    except ValueError:
        raise CatalogError(
            "tracks.csv: no ('track', 'genre_top') and ('album', 'title') columns; "
            "expected the FMA metadata format (fma_metadata/tracks.csv)"
        ) from None
    out: dict[int, FmaTrack] = {}
    for row in reader:
        if not row or not row[0].strip().isdigit():
            continue
        out[int(row[0])] = FmaTrack(
            genre_top=row[genre_col] if genre_col < len(row) else "",
            album_title=row[album_col] if album_col < len(row) else "",
        )
    return out


def _load_fma(tracks_csv: str, s3_endpoint_url: str | None) -> dict[int, FmaTrack]:
    fs, path = fsspec_filesystem(tracks_csv, s3_endpoint_url)
    if not fs.exists(path):
        raise CatalogError(f"tracks.csv not found: {tracks_csv}")
    data = read_bytes(tracks_csv, s3_endpoint_url)  # retried as a whole when the body is cut short
    return read_fma_tracks(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""))


def _fma_key(rel: str) -> int | None:
    stem = posixpath.splitext(posixpath.basename(rel))[0]
    return int(stem) if stem.isdigit() else None


def mixes_catalog(fs, root: str, files: list[str], test_fraction: float,
                  fma: dict[int, FmaTrack] | None, genres: list[str] | None) -> Catalog:
    wanted = {g.strip().lower() for g in genres} if genres else None
    tracks, filtered = [], []
    for path in files:
        rel = _relative(path, root)
        if _split_ext(rel)[1] not in MIX_EXTENSIONS:
            continue
        track_id = posixpath.splitext(rel)[0]
        if fma is not None:
            meta = fma.get(_fma_key(rel))
            if meta is None:
                if wanted is not None:
                    filtered.append((track_id, "not in tracks.csv (genre unknown)"))
                    continue
            else:
                if wanted is not None and meta.genre_top.strip().lower() not in wanted:
                    filtered.append((track_id, f"genre {meta.genre_top or '(none)'!r} not selected"))
                    continue
                if LIVE_ALBUM.search(meta.album_title):
                    filtered.append((track_id, f"live album {meta.album_title!r}"))
                    continue
        uri = _uri(fs, path)
        tracks.append(Track(track_id, hash_split(track_id, test_fraction), uri, {"mix": uri}))
    return Catalog("mixes", tracks, filtered)


def build_catalog(input_uri: str, layout: str | None = None, genres: list[str] | None = None,
                  tracks_csv: str | None = None, test_fraction: float = DEFAULT_TEST_FRACTION,
                  s3_endpoint_url: str | None = None) -> Catalog:
    """List INPUT (local folder or s3:// prefix) into tracks with their split.

    For mixes, `tracks_csv` defaults to INPUT/tracks.csv when that file exists.
    """
    if layout is not None and layout not in LAYOUTS:
        raise CatalogError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 0.0 <= test_fraction <= 1.0:
        raise CatalogError(f"test fraction must be in [0, 1], got {test_fraction}")
    fs, root, files = _list_files(input_uri, s3_endpoint_url)
    relative = [_relative(p, root) for p in files]
    layout = layout or detect_layout(relative)
    if layout == "stems":
        if genres or tracks_csv:
            raise CatalogError("--genres / --tracks-csv apply to the mixes layout (FMA), not to stems")
        return stems_catalog(fs, root, files, test_fraction)
    if tracks_csv is None:
        default_csv = posixpath.join(root, "tracks.csv")
        if default_csv in files:
            tracks_csv = _uri(fs, default_csv) if is_remote(input_uri) else default_csv
    if genres and tracks_csv is None:
        raise CatalogError("--genres needs FMA metadata: pass --tracks-csv or put tracks.csv in INPUT")
    fma = _load_fma(tracks_csv, s3_endpoint_url) if tracks_csv else None
    return mixes_catalog(fs, root, files, test_fraction, fma, genres)
