"""Window arithmetic: mel images <-> the fixed-size windows the networks see, without Ray.

Cutting: windows of `window_frames` (256) frames start every `stride_frames` (206), so
neighbours share `overlap_frames` (50).  Training data keeps only full windows; inference
adds one window over the tail, padded with silence, so every frame is covered.

Overlap-add: each window is weighted by a raised-cosine fade over its overlapping edges
(sin^2 in, cos^2 out: the two weights of an overlap sum to one), and the weighted windows
are summed as mel *power* (the dB images converted back to power) and divided by the
summed weights.  Two neighbouring windows that disagree in level therefore meet in a
50-frame (~1.2 s) cross-fade, not a step.  Power, not dB: the generator's output textures
in an overlap are largely uncorrelated between the two windows, and a weighted mean of dB
values is a geometric mean of powers, which dips (by ~3 dB in the mel, more after
Griffin-Lim) in the middle of every overlap; the arithmetic mean of powers keeps the level.

`apply_windowed(model, image)` is the whole inference path of one image: cut, the model
over the windows `batch_size` at a time, overlap-add, the tail cropped off again.
`apply_windowed_many` does it for several images with their windows sharing the model's
batches (a GPU's batches stay full however short the clips).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from pipelines.mel import MelParams, dequantize, image_to_model, model_to_image, quantize

# (image index, [n, 1, n_mels, window_frames] model input of that image's windows) -> model input
Perturb = Callable[[int, torch.Tensor], torch.Tensor]


def window_starts(n_frames: int, params: MelParams = MelParams(), pad_tail: bool = False,
                  stride: int | None = None) -> list[int]:
    """Start frames of the windows cut from `n_frames` frames, every `stride` frames
    (default the codec's, params.stride_frames).

    Without `pad_tail` only full windows are cut and the tail after the last one
    (< stride + overlap frames) is dropped: that is what training data uses.  With
    `pad_tail` one more window covers the tail, so every frame is covered.
    """
    w, s = params.window_frames, stride or params.stride_frames
    if n_frames < w:
        return [0] if (pad_tail and n_frames > 0) else []
    starts = list(range(0, n_frames - w + 1, s))
    if pad_tail and starts[-1] + w < n_frames:
        starts.append(starts[-1] + s)
    return starts


def cut_windows(image: torch.Tensor, params: MelParams = MelParams(), pad_tail: bool = False,
                pad_value: int = 0, stride: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """[n_mels, frames] image -> ([n_windows, n_mels, window_frames], start frames); the tail
    window (`pad_tail`) is padded with `pad_value` past the image's end."""
    n_frames = image.shape[-1]
    starts = window_starts(n_frames, params, pad_tail, stride)
    w = params.window_frames
    if not starts:
        return image.new_zeros((0, image.shape[-2], w)), starts
    needed = starts[-1] + w
    if needed > n_frames:
        image = torch.nn.functional.pad(image, (0, needed - n_frames), value=pad_value)
    windows = torch.stack([image[..., s:s + w] for s in starts])
    return windows, starts


def crossfade_weights(n_windows: int, window_frames: int, overlap: int) -> torch.Tensor:
    """[n_windows, window_frames] weights: 1 inside, raised-cosine fades over inner overlaps."""
    weights = torch.ones(n_windows, window_frames, dtype=torch.float64)
    if overlap <= 0 or n_windows < 2:
        return weights
    t = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
    fade_in = torch.sin(0.5 * torch.pi * t) ** 2
    weights[1:, :overlap] = fade_in
    weights[:-1, window_frames - overlap:] = 1.0 - fade_in
    return weights


def stitch_windows(windows_db: torch.Tensor, starts: list[int], n_frames: int, overlap: int) -> torch.Tensor:
    """[n, n_mels, W] dB windows at `starts` -> [n_mels, n_frames] dB, cross-faded overlap-add of power."""
    n, n_mels, width = windows_db.shape
    if n == 0:
        raise ValueError("no windows to stitch")
    total = max(starts[-1] + width, n_frames)
    acc = torch.zeros(n_mels, total, dtype=torch.float64)
    norm = torch.zeros(total, dtype=torch.float64)
    weights = crossfade_weights(n, width, overlap)
    power = torch.pow(10.0, windows_db.double() / 10.0)
    for i, start in enumerate(starts):
        acc[:, start:start + width] += power[i] * weights[i]
        norm[start:start + width] += weights[i]
    mixed = acc / norm.clamp_min(1e-12)
    return (10.0 * torch.log10(mixed.clamp_min(1e-30)))[:, :n_frames].float()


def overlap_add(windows: torch.Tensor, n_frames: int, params: MelParams = MelParams()) -> torch.Tensor:
    """[n, n_mels, window_frames] uint8 windows cut with pad_tail from `n_frames` frames ->
    the [n_mels, n_frames] uint8 image they cross-fade into (the tail's padding dropped)."""
    starts = window_starts(n_frames, params, pad_tail=True)
    if len(starts) != len(windows):
        raise ValueError(f"{len(windows)} windows for {n_frames} frames (expected {len(starts)})")
    db = stitch_windows(dequantize(windows, params), starts, n_frames, params.overlap_frames)
    return quantize(db, params)


def run_in_batches(model: Callable, x: torch.Tensor, batch_size: int, device: str = "cpu") -> torch.Tensor:
    """[n, 1, mels, frames] model input -> [n, mels, frames] uint8 output, `batch_size` windows
    per call on `device` (results back on the CPU)."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            outs.append(model(x[start:start + batch_size].to(device)).float().cpu())
    return model_to_image(torch.cat(outs)).squeeze(1)


@dataclass
class Windowed:
    """apply_windowed_many's result: the output images and where the time went."""

    images: list            # [n_mels, n_frames] uint8 per input image
    seconds_model: float    # cutting and the model, all images together
    seconds_overlap_add: list  # per image


def apply_windowed_many(model: Callable, images: list[torch.Tensor], params: MelParams = MelParams(),
                        batch_size: int = 8, device: str = "cpu", perturb: Perturb | None = None) -> Windowed:
    """[n_mels, frames] uint8 images -> the model's [n_mels, frames] uint8 images, the windows
    of all images going through `model` together, `batch_size` at a time.  `model` maps
    [b, 1, n_mels, window_frames] in [-1, 1] to the same; `perturb(i, x)` may change image
    i's model input (the seeded variation noise) before it runs."""
    start = time.perf_counter()
    inputs = []
    for i, image in enumerate(images):
        windows, _ = cut_windows(image, params, pad_tail=True)
        if not len(windows):
            raise ValueError(f"image {i} has no frames to cut windows from")
        x = image_to_model(windows).unsqueeze(1)
        inputs.append(perturb(i, x) if perturb else x)
    outputs = run_in_batches(model, torch.cat(inputs), batch_size, device) if inputs else None
    seconds_model = time.perf_counter() - start
    result, offset = Windowed([], seconds_model, []), 0
    for image, x in zip(images, inputs):
        t0 = time.perf_counter()
        result.images.append(overlap_add(outputs[offset:offset + len(x)], image.shape[-1], params))
        result.seconds_overlap_add.append(time.perf_counter() - t0)
        offset += len(x)
    return result


def apply_windowed(model: Callable, image: torch.Tensor, params: MelParams = MelParams(), batch_size: int = 8,
                   device: str = "cpu", perturb: Perturb | None = None) -> torch.Tensor:
    """[n_mels, frames] uint8 image -> the model's [n_mels, frames] uint8 image: cut into
    windows (the tail padded with silence), run `batch_size` windows at a time, overlap-added."""
    return apply_windowed_many(model, [image], params, batch_size, device, perturb).images[0]
