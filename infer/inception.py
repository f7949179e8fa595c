"""Inception-v3 activations of mel images, for the paper's FID-based density features.

The network is torchvision's `inception_v3` architecture.  Its weights come from
  - `--inception-weights PATH` (a local file or s3:// URL holding a state dict), or
  - torchvision's download cache: `<torch.hub.get_dir()>/checkpoints/inception_v3_google-0cc3c7bd.pth`,
    which `torchvision.models.inception_v3(weights="DEFAULT")` leaves there on a machine
    with internet (copy that file to offline machines).
Nothing is downloaded here.  `save_random_weights` writes a deterministic, randomly
initialised network in the same format: the offline stand-in tests and benchmarks use,
loaded through exactly the same path as real weights.

A mel image (uint8, [n_mels, frames]) is cut into 256-frame windows (the tail padded
with silence); each window becomes a grey 3-channel picture, resized to 299 x 299 and
normalised like ImageNet.  For every layer in LAYERS the activation map is averaged
over space, then over the clip's windows: one vector per layer per clip.
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch

# layer name -> channels; "pool3" is the 2048-d pool layer FID uses.
LAYERS = {"mixed_5d": 288, "mixed_6e": 768, "pool3": 2048}
_CAPTURE = {"Mixed_5d": "mixed_5d", "Mixed_6e": "mixed_6e", "Mixed_7c": "pool3"}
_SKIP = {"AuxLogits", "avgpool", "dropout", "fc"}
TORCHVISION_FILE = "inception_v3_google-0cc3c7bd.pth"
INPUT_SIZE = 299
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class WeightsNotFound(FileNotFoundError):
    pass


def torchvision_cache_path() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILE)


def resolve_weights(path: str | None) -> str:
    """The weights file to use: the given one, else torchvision's cache; a clear error if neither."""
    if path:
        return path
    cached = torchvision_cache_path()
    if os.path.exists(cached):
        return cached
    raise WeightsNotFound(
        f"no Inception-v3 weights: pass --inception-weights PATH, or put torchvision's "
        f"{TORCHVISION_FILE} at {cached} (torchvision.models.inception_v3(weights='DEFAULT') "
        f"downloads it there on a machine with internet)"
    )


def _architecture() -> torch.nn.Module:
    import torchvision

    # aux_logits=True so torchvision's own state dict (which has AuxLogits.*) loads strictly;
    # transform_input=True is how torchvision runs its ImageNet weights.
    return torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                           transform_input=True)


def save_random_weights(path: str, seed: int = 0) -> str:
    """Write a randomly initialised (deterministic for `seed`) Inception-v3 state dict to `path`."""
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True,
                                          transform_input=True)
    torch.save(net.state_dict(), path)
    return path


def load_state_dict(path: str, s3_endpoint_url: str | None = None) -> dict:
    from pipelines.storage import fsspec_filesystem, read_bytes

    fs, inner = fsspec_filesystem(path, s3_endpoint_url)
    if not fs.exists(inner):
        raise WeightsNotFound(f"Inception weights not found: {path}")
    data = read_bytes(path, s3_endpoint_url)  # retried as a whole when the body is cut short
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors: the file is not a state dict
        raise ValueError(f"{path}: not a torch state dict ({err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class InceptionFeatures(torch.nn.Module):
    """Inception-v3 up to Mixed_7c, returning the spatially pooled activations of LAYERS."""

    def __init__(self, state_dict: dict):
        super().__init__()
        net = _architecture()
        try:
            net.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(f"weights do not fit torchvision's inception_v3: {err}") from err
        net.eval()
        self.transform_input = net._transform_input
        self.blocks = torch.nn.ModuleList(
            [m for name, m in net.named_children() if name not in _SKIP])
        self.names = [name for name, _ in net.named_children() if name not in _SKIP]

    @torch.inference_mode()
    def forward(self, pictures: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.transform_input(pictures)
        out = {}
        for name, block in zip(self.names, self.blocks):
            x = block(x)
            if name in _CAPTURE:
                out[_CAPTURE[name]] = x.mean(dim=(2, 3))
        return out


def mel_windows_to_pictures(windows: torch.Tensor) -> torch.Tensor:
    """[n, n_mels, frames] uint8 -> [n, 3, 299, 299] ImageNet-normalised float pictures."""
    x = windows.float().div(255.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                                        align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_activations(net: InceptionFeatures, images: list[np.ndarray], window_frames: int,
                     device: str = "cpu", batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-clip activation vectors {layer: [n_clips, channels]} for uint8 mel images of any length."""
    from pipelines.mel import MelParams
    from pipelines.windowing import cut_windows

    params = MelParams(window_frames=window_frames)
    windows, owner = [], []
    for i, image in enumerate(images):
        w, _ = cut_windows(torch.from_numpy(np.ascontiguousarray(image)), params, pad_tail=True)
        windows.append(w)
        owner += [i] * len(w)
    if not owner:
        return {name: np.zeros((0, ch), np.float32) for name, ch in LAYERS.items()}
    windows = torch.cat(windows)
    per_window = {name: [] for name in LAYERS}
    for start in range(0, len(windows), batch_size):
        pictures = mel_windows_to_pictures(windows[start:start + batch_size].to(device))
        for name, act in net(pictures).items():
            per_window[name].append(act.float().cpu())
    owner_t = torch.tensor(owner)
    counts = torch.bincount(owner_t, minlength=len(images)).clamp_min(1).unsqueeze(1).float()
    result = {}
    for name, chunks in per_window.items():
        acts = torch.cat(chunks)
        sums = torch.zeros(len(images), acts.shape[1]).index_add_(0, owner_t, acts)
        result[name] = (sums / counts).numpy()
    return result
