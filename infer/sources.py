"""Finding the clips a job works on: audio files and folders, Parquet window sets, generate outputs.

Clip ids (what outputs are named after and what scoring matches on):
  - a file given directly: its name without extension ("song.flac" -> "song");
  - a file inside a folder given as input: its path under that folder without
    extension ("album/song.flac" -> "album/song");
  - stem layout: when a folder holds files named after the stem the job wants
    (`bass.*` for generate, `drums.*` for score), only those are used and a clip is
    the folder holding one ("test/track-1/bass.wav" -> "test/track-1"), so a
    musdb18-style tree works as is;
  - with several inputs, folder clips are prefixed with the folder's name;
  - a Parquet window row: "<track_id>/w<window, 4 digits>" ("song-3/w0002").
Every id goes through `pipelines.clip_ids.clip_id` (Unicode-safe, unique, stable).
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

from cluster.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
MANIFEST = "manifest.parquet"


class SourceError(UserError):
    """An input that cannot be used at all (missing, empty, mixed kinds)."""


@dataclass(frozen=True)
class AudioClip:
    clip_id: str
    uri: str          # full path or URL of the audio file


def _join(root: str, rel: str) -> str:
    return posixpath.join(root.rstrip("/"), rel) if "://" in root else os.path.join(root, rel)


def _fs(uri: str, s3_endpoint_url: str | None):
    from pipelines.storage import fsspec_filesystem

    return fsspec_filesystem(uri, s3_endpoint_url)


def _full_uri(uri: str, fs, inner: str) -> str:
    """Turn a path inside `fs` back into a URI of the same kind as `uri`."""
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        return f"{scheme}://{inner}"
    return inner


def check_long_enough(signal, params, name: str) -> None:
    """The mel analysis needs more than n_fft / 2 samples (its centred first frame): else an AudioError."""
    from pipelines.audio import AudioError

    need = params.n_fft // 2 + 1
    if signal.shape[-1] < need:
        raise AudioError(f"{name}: too short ({signal.shape[-1]} samples at {params.sample_rate} Hz; "
                         f"at least {need}, {1000 * need / params.sample_rate:.0f} ms, are needed)")


def safe_clip_id(text: str) -> str:
    """A clip id usable as a relative output path (see `pipelines.clip_ids.clip_id`)."""
    from pipelines.clip_ids import ClipIdError, clip_id

    try:
        return clip_id(text)
    except ClipIdError as err:
        raise SourceError(str(err)) from err


def is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _stem(name: str) -> str:
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base


def is_parquet_source(uri: str, s3_endpoint_url: str | None = None) -> bool:
    """True for a .parquet file or a folder whose files are Parquet (a window set)."""
    fs, inner = _fs(uri, s3_endpoint_url)
    if not fs.exists(inner):
        return False
    if fs.isfile(inner):
        return inner.endswith(".parquet")
    files = fs.find(inner)
    return any(f.endswith(".parquet") for f in files) and not any(is_audio_name(f) for f in files) \
        and not fs.exists(posixpath.join(inner, MANIFEST))


def list_audio(inputs: list[str], stem: str, s3_endpoint_url: str | None = None) -> list[AudioClip]:
    """Every audio clip under `inputs` (files or folders, local or URLs), with its clip id."""
    clips: list[AudioClip] = []
    for uri in inputs:
        fs, inner = _fs(uri, s3_endpoint_url)
        if not fs.exists(inner):
            raise SourceError(f"input not found: {uri}")
        if fs.isfile(inner):
            name = _stem(inner)
            parent = posixpath.basename(posixpath.dirname(inner.rstrip("/")))
            clip = parent if (name == stem and parent) else name
            clips.append(AudioClip(safe_clip_id(clip), uri))
            continue
        files = sorted(f for f in fs.find(inner) if is_audio_name(f))
        if not files:
            raise SourceError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {uri}")
        stem_files = [f for f in files if _stem(f) == stem]
        root = inner.rstrip("/")
        prefix = posixpath.basename(root) if len(inputs) > 1 else ""
        for f in stem_files or files:
            rel = posixpath.relpath(f, root)
            clip = posixpath.dirname(rel) if stem_files else rel.rsplit(".", 1)[0]
            clip = clip or posixpath.basename(root)
            clips.append(AudioClip(safe_clip_id(posixpath.join(prefix, clip) if prefix else clip),
                                   _full_uri(uri, fs, f)))
    seen: dict[str, str] = {}
    for c in clips:
        if c.clip_id in seen:
            raise SourceError(f"two inputs give the same clip id {c.clip_id!r}: {seen[c.clip_id]} and {c.uri}")
        seen[c.clip_id] = c.uri
    return clips


def sibling_audio(uri: str, stem: str, s3_endpoint_url: str | None = None) -> str | None:
    """The `<stem>.*` audio file in the same folder as `uri`, if there is one (e.g. bass beside drums)."""
    fs, inner = _fs(uri, s3_endpoint_url)
    folder = posixpath.dirname(inner)
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return None
    for name in sorted(names):
        if _stem(name) == stem and is_audio_name(name) and name != inner:
            return _full_uri(uri, fs, name)
    return None


def generated_clips(uri: str, s3_endpoint_url: str | None = None) -> tuple[list[AudioClip], dict]:
    """Drum clips of a GENERATED set: a `generate` OUTPUT (its manifest) or any audio folder/file.

    Returns the clips and the generate summary (empty when there is none).
    """
    import json

    import pyarrow.parquet as pq

    fs, inner = _fs(uri, s3_endpoint_url)
    manifest = posixpath.join(inner.rstrip("/"), MANIFEST)
    if fs.exists(inner) and fs.isdir(inner) and fs.exists(manifest):
        with fs.open(manifest, "rb") as f:
            table = pq.read_table(f, columns=["clip_id", "drums_path"])
        summary = {}
        summary_path = posixpath.join(inner.rstrip("/"), "summary.json")
        if fs.exists(summary_path):
            with fs.open(summary_path, "rb") as f:
                summary = json.loads(f.read())
        clips = [AudioClip(cid, _join(uri, rel)) for cid, rel in
                 zip(table.column("clip_id").to_pylist(), table.column("drums_path").to_pylist())]
        return clips, summary
    return list_audio([uri], stem="drums", s3_endpoint_url=s3_endpoint_url), {}
