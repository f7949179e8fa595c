"""generate's model stage: the generator actor (bass image -> drums image -> audio at the mel rate).

The generator is loaded once per actor.  All windows of a batch's clips go through it
together, `batch_size` at a time (pipelines.windowing.apply_windowed_many: cut, model,
overlap-add), then the clips' drum images are inverted with batched Griffin-Lim on the
actor's device (infer.render.invert_images).

Controlled randomness (`variation`, `seed`): noise N(0, variation^2) is added to the
generator's input (the bass window in [-1, 1], clamped back to that range).  The noise of
window w of clip c comes from a generator seeded with hash(seed, c, w), so it does not
depend on batching or on which actor runs it.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from pipelines.codec_options import GRIFFIN_LIM_ITERS
from infer.generate_rows import row_image, to_columns, to_rows


def noise_seed(seed: int, clip_id: str, window: int) -> int:
    """A 63-bit seed that depends only on (seed, clip, window): independent of batching."""
    digest = hashlib.sha256(f"{seed}/{clip_id}/{window}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def variation_noise(shape: tuple, seed: int, clip_id: str, window: int, strength: float):
    import torch

    g = torch.Generator().manual_seed(noise_seed(seed, clip_id, window))
    return torch.randn(shape, generator=g) * strength


class GeneratorActor:
    """Holds the bass->drums generator (loaded once per actor) and runs clips through it."""

    def __init__(self, checkpoint: str, device: str, batch_size: int, variation: float, seed: int,
                 s3_endpoint_url: str | None = None, generator: tuple[dict, dict] | None = None,
                 placements=None, torch_threads: int = 1, n_iter: int = GRIFFIN_LIM_ITERS):
        """`generator` = (checkpoint config, generator state dict), as the driver read them:
        the actors then need no storage access (fewer places for an S3 fault to kill one).
        `n_iter`: Griffin-Lim iterations of the inversion each batch ends with."""
        import torch

        from cluster.placement import claim_device
        from pipelines.mel import MelParams
        from train.checkpoint import load_generator
        from train.models import build_generator

        device = claim_device(device, "generator", placements, torch_threads)
        if device == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 256x256 windows: pick the fastest kernels once
        self.device = device
        if generator is not None:
            config, state = generator
            self.model = build_generator(config)
            self.model.load_state_dict(state)
            self.model.to(device).eval()
            self.params = MelParams.from_dict(config["mel_params"])
        else:
            self.model, self.params, _ = load_generator(checkpoint, device=device,
                                                        s3_endpoint_url=s3_endpoint_url)
        self.batch_size, self.variation, self.seed = batch_size, variation, seed
        self.n_iter = n_iter

    def noise_for(self, clip_ids: list[str]):
        """apply_windowed_many's `perturb` for these clips: each window's seeded variation
        noise (None at variation 0)."""
        import torch

        if self.variation <= 0:
            return None

        def add_noise(i: int, x):
            noise = torch.stack([variation_noise(x.shape[1:], self.seed, clip_ids[i], w, self.variation)
                                 for w in range(len(x))])
            return (x + noise).clamp(-1.0, 1.0)

        return add_noise

    def generate_images(self, images: list, clip_ids: list[str]):
        """uint8 bass images of these clips -> their drums images (pipelines.windowing.Windowed)."""
        from pipelines.windowing import apply_windowed_many

        return apply_windowed_many(self.model, images, self.params, self.batch_size, self.device,
                                   self.noise_for(clip_ids))

    def __call__(self, batch: dict) -> dict:
        rows = to_rows(batch)
        if not rows:
            return batch
        todo = [r for r in rows if not r["error"]]
        if todo:
            self.invert_rows(todo, self.generate_rows(todo))
        return to_columns(rows)

    def generate_rows(self, todo: list[dict]) -> list:
        """The rows' drums images (also put in the rows), their windows sharing the model's batches."""
        out = self.generate_images([row_image(r, "bass_input", self.params) for r in todo],
                                   [str(r["clip_id"]) for r in todo])
        total_windows = max(1, sum(int(r["n_windows"]) for r in todo))
        for r, image, seconds_stitch in zip(todo, out.images, out.seconds_overlap_add):
            r["seconds_generate"] = out.seconds_model * int(r["n_windows"]) / total_windows
            r["seconds_stitch"] = seconds_stitch
            r["drums_image"] = image.numpy().tobytes()
        return out.images

    def invert_rows(self, todo: list[dict], drums_images: list) -> None:
        """Invert (pseudo-inverse + batched Griffin-Lim) on this actor's device: 32 STFT/iSTFT
        pairs per clip, fast on a GPU, and on CPU one core's worth of work kept beside the
        generator instead of queued for a task.  A Parquet window's bass is inverted too."""
        from infer import render

        images, lengths, owners = [], [], []
        for r, drums in zip(todo, drums_images):
            images.append(drums.to(self.device))
            lengths.append(int(r["model_samples"]))
            owners.append((r, "drums_audio"))
            if r["bass_from_mel"]:
                images.append(row_image(r, "bass_input", self.params).to(self.device))
                lengths.append(int(r["model_samples"]))
                owners.append((r, "bass_audio"))
        t0 = time.perf_counter()
        audio = render.invert_images(images, lengths, self.params, self.n_iter)
        audio = [a.float().cpu().numpy() for a in audio]
        seconds = time.perf_counter() - t0
        total = max(1, sum(img.shape[-1] for img in images))
        for (r, key), a, img in zip(owners, audio, images):
            r[key] = np.ascontiguousarray(a, dtype=np.float32).tobytes()
            r["seconds_invert"] = float(r["seconds_invert"]) + seconds * img.shape[-1] / total
