"""Baseline sets scored beside the generated ones: what a score means only next to these.

For every usable reference clip (with --baselines, the default when the reference has
2 or more clips):
  true-drums    the true drums themselves: the ceiling of every metric;
  other-clip    the true drums of ANOTHER reference clip (real drums, wrong part): a
                seeded derangement of the reference clips, so no clip is its own partner,
                within each song where it can be (clips in the same folder, or windows of
                the same track): same kit and tempo, another part;
  bass-copy     the bass itself, as if a model had copied its input (when the reference
                has the bass);
  shaped-noise  noise with the true drums' long-term spectrum: per mel bin and frame,
                the bin's mean power over the clip times an exponential variate (the
                power of Gaussian noise seen through a filter bank), seeded by clip id;
  silence       an all-silent mel image.
They are sets like the generated ones in every table, plot and summary, flagged
`baseline`.  All are made in the mel domain, from the reference rows, so they cost no
audio decoding; the report turns the ones it shows into audio.
"""
from __future__ import annotations

import hashlib

import numpy as np

TRUE, OTHER, BASS, NOISE, SILENCE = "true-drums", "other-clip", "bass-copy", "shaped-noise", "silence"
BASELINES = (TRUE, OTHER, BASS, NOISE, SILENCE)


def stable_seed(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def derangement(n: int, seed: int) -> np.ndarray:
    """[n] partner index of each item, never itself (n >= 2): a seeded random cycle."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=int)
    partner[order] = np.roll(order, -1)
    return partner


def song_derangement(clip_ids: list[str], seed: int) -> np.ndarray:
    """[n] partner index of each clip, never itself: another clip of the same song (folder) when it has one.

    Songs with a single clip are deranged among themselves; a last lone clip gets any other clip.
    """
    n = len(clip_ids)
    if n < 2:
        raise ValueError("a derangement needs at least 2 clips")
    songs: dict[str, list[int]] = {}
    for i, clip_id in enumerate(clip_ids):
        songs.setdefault(clip_id.rsplit("/", 1)[0] if "/" in clip_id else "", []).append(i)
    partner = np.full(n, -1)
    lone = []
    for song, members in sorted(songs.items()):
        if len(members) >= 2:
            partner[members] = np.array(members)[derangement(len(members), stable_seed(seed, song))]
        else:
            lone += members
    if len(lone) >= 2:
        partner[lone] = np.array(lone)[derangement(len(lone), stable_seed(seed, "lone"))]
    elif lone:
        others = [j for j in range(n) if j != lone[0]]
        partner[lone[0]] = others[np.random.default_rng(seed).integers(len(others))]
    return partner


def partner_candidates(clip_ids: list[str], seed: int, limit: int = 8) -> list[list[int]]:
    """Per clip, up to `limit` other-clip partners in order of preference: `song_derangement`'s
    partner first, then the other clips of its song, then any others (both in a seeded order).

    The reference stage takes the first whose drums decode, so one unreadable file costs
    its own clip and no partner's baseline."""
    n = len(clip_ids)
    first = song_derangement(clip_ids, seed)
    order = np.random.default_rng(stable_seed(seed, "fallback")).permutation(n)
    songs: dict[str, list[int]] = {}
    for i in order:
        songs.setdefault(_song(clip_ids[i]), []).append(int(i))
    out = []
    for i in range(n):
        chosen, seen = [int(first[i])], {i, int(first[i])}
        for pool in (songs[_song(clip_ids[i])], order):
            for k in pool:
                if len(chosen) >= limit:
                    break
                if int(k) not in seen:
                    chosen.append(int(k))
                    seen.add(int(k))
        out.append(chosen)
    return out


def _song(clip_id: str) -> str:
    return clip_id.rsplit("/", 1)[0] if "/" in clip_id else ""


def shaped_noise_image(true_image: np.ndarray, params, seed: int) -> np.ndarray:
    """uint8 mel image of noise with the true drums' long-term (per-bin mean power) spectrum."""
    db = params.db_min + true_image.astype(np.float64) * params.db_step
    mean_power = (10.0 ** (db / 10.0)).mean(axis=1, keepdims=True)
    power = mean_power * np.random.default_rng(seed).exponential(size=db.shape)
    import torch

    from pipelines.mel import quantize

    noise_db = 10.0 * np.log10(np.maximum(power, 1e-30))
    return quantize(torch.from_numpy(noise_db), params).numpy()


def fit_frames(image: np.ndarray, frames: int) -> np.ndarray:
    """Crop, or repeat then crop, a mel image to `frames` frames (another clip's drums, this clip's length)."""
    reps = -(-frames // max(1, image.shape[1]))
    return np.tile(image, (1, reps))[:, :frames]


def baseline_images(clip_id: str, true: np.ndarray, bass: np.ndarray | None, other: np.ndarray | None,
                    params, seed: int) -> dict[str, np.ndarray]:
    """{baseline name: uint8 mel image} for one reference clip (bass-copy / other-clip when available)."""
    out = {TRUE: true}
    if other is not None:
        out[OTHER] = fit_frames(other, true.shape[1])
    if bass is not None:
        out[BASS] = bass
    out[NOISE] = shaped_noise_image(true, params, stable_seed(seed, clip_id, NOISE))
    out[SILENCE] = np.zeros_like(true)
    return out
