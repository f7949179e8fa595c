"""What `cycledrums score` works on: its options, the GENERATED sets, the REFERENCE, how clips match.

Everything here runs on the driver before Ray starts, so a bad input is a one-line
error (a `ScoreError`) and not a failure half way through the job.

Matching generated clips to reference clips (`match_clip_ids`): ids match when they
are equal, or when one is the other with leading folders removed ("track-1" matches
"test/track-1" and the other way round), provided exactly one reference clip fits.
So a reference given as a stems root ("stems", ids "test/track-1") and as its split
folder ("stems/test", ids "track-1") both match drums generated from either.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from cluster.errors import UserError
from cluster.resources import ResourceRequest
from infer.options import ScoringOptions

MATCHING_RULE = ("clip ids match when equal, or when one is the other with leading folders removed "
                 "('track-1' matches 'test/track-1' and vice versa), if exactly one reference clip fits")


class ScoreError(UserError):
    """A problem with the job's inputs as a whole (printed as a CLI error)."""


@dataclass(kw_only=True)
class ScoreConfig(ScoringOptions):
    """`score`: the scoring options (infer/options.py) and what the job works on."""

    generated: list[str]                 # "[LABEL=]PATH" each
    reference: str
    output: str
    seed: int = 0
    s3_endpoint_url: str | None = None
    address: str | None = None
    resources: ResourceRequest = field(default_factory=ResourceRequest)


def parse_generated(spec: str) -> tuple[str | None, str]:
    """'LABEL=PATH' -> (LABEL, PATH); a plain path -> (None, PATH)."""
    head, sep, tail = spec.partition("=")
    if sep and head and tail and "/" not in head and ":" not in head:
        return head, tail
    return None, spec


@dataclass
class GeneratedSet:
    label: str
    uri: str
    clips: list                          # [AudioClip]
    baseline: bool = False
    matches: dict = field(default_factory=dict)   # generated clip id -> reference clip id


def load_generated_sets(specs: list[str], s3_endpoint_url: str | None) -> list[GeneratedSet]:
    from infer.sources import generated_clips

    sets: list[GeneratedSet] = []
    for spec in specs:
        label, uri = parse_generated(spec)
        clips, summary = generated_clips(uri, s3_endpoint_url)
        if not clips:
            raise ScoreError(f"no generated clips in {uri}")
        label = label or summary.get("model") or posixpath.basename(uri.rstrip("/")) or "generated"
        taken = {s.label for s in sets}
        base, n = label, 2
        while label in taken:
            label, n = f"{base}-{n}", n + 1
        sets.append(GeneratedSet(label, uri, clips))
    return sets


@dataclass
class ReferenceSet:
    uri: str
    kind: str                      # "parquet" | "audio"
    params: object                 # MelParams
    clip_ids: list[str]
    audio_rows: list[dict] = field(default_factory=list)


def load_reference(uri: str, s3_endpoint_url: str | None) -> ReferenceSet:
    from pipelines.mel import MelParams

    from infer.sources import is_parquet_source, list_audio, sibling_audio

    if is_parquet_source(uri, s3_endpoint_url):
        return _parquet_reference(uri, s3_endpoint_url)
    clips = list_audio([uri], stem="drums", s3_endpoint_url=s3_endpoint_url)
    rows = []
    for clip in clips:
        is_stem = posixpath.basename(clip.uri).rsplit(".", 1)[0] == "drums"
        bass = sibling_audio(clip.uri, "bass", s3_endpoint_url) if is_stem else None
        rows.append({"clip_id": clip.clip_id, "drums_uri": clip.uri, "bass_uri": bass or ""})
    return ReferenceSet(uri, "audio", MelParams(), [r["clip_id"] for r in rows], rows)


def _parquet_reference(uri: str, s3_endpoint_url: str | None) -> ReferenceSet:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from pipelines.storage import arrow_filesystem
    from pipelines.windows import mel_params_from_schema

    from pipelines.clip_ids import window_clip_id

    fs, path = arrow_filesystem(uri, s3_endpoint_url)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    try:
        params = mel_params_from_schema(dataset.schema)
    except ValueError as err:
        raise ScoreError(f"{uri}: {err}") from err
    ids = dataset.to_table(columns=["track_id", "window"], filter=pc.field("split") == "test")
    clip_ids = [window_clip_id(t, w) for t, w in zip(ids.column("track_id").to_pylist(),
                                                      ids.column("window").to_pylist())]
    if not clip_ids:
        raise ScoreError(f"{uri}: no rows in the test split")
    return ReferenceSet(uri, "parquet", params, clip_ids)


# ---------------------------------------------------------------- matching


def _suffixes(clip_id: str) -> list[str]:
    parts = clip_id.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def match_clip_ids(generated: list[str], reference: list[str]) -> dict[str, str]:
    """{generated id: reference id} for the generated ids that match one reference clip (MATCHING_RULE)."""
    exact = set(reference)
    by_suffix: dict[str, list[str]] = {}
    for r in reference:
        for s in _suffixes(r)[1:]:
            by_suffix.setdefault(s, []).append(r)
    out = {}
    for g in generated:
        if g in exact:
            out[g] = g
            continue
        longer = by_suffix.get(g, [])               # the reference id has more leading folders
        shorter = [s for s in _suffixes(g)[1:] if s in exact]  # the generated id has more
        candidates = set(longer) | set(shorter)
        if len(candidates) == 1:
            out[g] = candidates.pop()
    return out


def attach_matches(sets: list[GeneratedSet], reference: ReferenceSet) -> None:
    """Match every set's clips to the reference; a set with no match at all is an error."""
    for s in sets:
        s.matches = match_clip_ids([c.clip_id for c in s.clips], reference.clip_ids)
        if not s.matches:
            raise ScoreError(
                f"no clip of set {s.label!r} ({s.uri}) matches a reference clip of {reference.uri}. "
                f"Generated ids: {_few(c.clip_id for c in s.clips)}; reference ids: "
                f"{_few(reference.clip_ids)}. Matching rule: {MATCHING_RULE}. Are GENERATED and "
                f"REFERENCE made from the same clips?")


def _few(ids, n: int = 4) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > n else "")


# ---------------------------------------------------------------- pre-flight


def check_output(uri: str, s3_endpoint_url: str | None) -> None:
    """OUTPUT must be a folder (or not exist yet): an existing file is refused before any work."""
    from pipelines.storage import fsspec_filesystem

    fs, inner = fsspec_filesystem(uri, s3_endpoint_url)
    if fs.exists(inner) and not fs.isdir(inner):
        raise ScoreError(f"OUTPUT {uri} is an existing file; give a folder (it is created if missing)")


def check_inception_weights(path: str | None, s3_endpoint_url: str | None) -> str:
    """Resolve and load the Inception weights on the driver: bad weights fail here, not in an actor."""
    from pipelines.storage import StorageError

    from infer.inception import InceptionFeatures, WeightsNotFound, load_state_dict, resolve_weights

    try:
        weights = resolve_weights(path)
        InceptionFeatures(load_state_dict(weights, s3_endpoint_url))
    except WeightsNotFound as err:
        raise ScoreError(str(err)) from err
    except StorageError:
        raise  # a storage fault after the retries, not bad weights: exit 1, a re-run retries it
    except (ValueError, OSError) as err:
        raise ScoreError(f"--inception-weights: {err}".splitlines()[0]) from err
    return weights
