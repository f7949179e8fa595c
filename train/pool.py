"""The image history buffer of CycleGAN (Shrivastava et al.): critics see older fakes too.

Holds up to `size` generated images.  For each new image: while the pool is not
full, store it and return it; once full, with probability 1/2 return a random
stored image and put the new one in its place, else return the new image.
The choices use Python's RNG, so the buffer never forces a device sync.
"""
from __future__ import annotations

import random

import torch


class ImagePool:
    def __init__(self, size: int = 50, rng: random.Random | None = None):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = rng or random.Random()

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """[n, c, h, w] fresh fakes -> [n, c, h, w] the fakes to show the critic."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i])
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, dim=0)

    def state_dict(self) -> dict:
        stacked = torch.cat(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stacked, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.size = int(state["size"])
        images = state["images"]
        self.images = [images[i:i + 1].to(device) for i in range(len(images))] if images.numel() else []
        self.rng.setstate(_as_rng_state(state["rng"]))


def _as_rng_state(state) -> tuple:
    # torch.load(weights_only=True) may hand tuples back as lists.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
