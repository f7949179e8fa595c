"""pipelines/windowing.py: cut -> model in batches -> overlap-add -> tail, without Ray."""
from __future__ import annotations

import pytest
import torch

from pipelines.mel import MelParams
from pipelines.windowing import apply_windowed, apply_windowed_many, window_starts

PARAMS = MelParams(n_mels=16, window_frames=64, overlap_frames=16)  # stride 48


def _image(n_frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (PARAMS.n_mels, n_frames), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _conv_model() -> torch.nn.Module:
    """A per-window model that mixes neighbouring frames, so a window's output depends on
    where it was cut."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 1, 5, padding=2), torch.nn.Tanh()).eval()


class Recording(torch.nn.Module):
    """Identity that records the batch sizes it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x


# lengths: shorter than a window, exactly one, one plus a tail of one frame, windows that end
# on the last frame, and a tail shorter than the stride
@pytest.mark.parametrize("n_frames", [1, 40, 64, 65, 64 + 2 * 48, 300])
def test_an_identity_model_gives_back_the_image_exactly(n_frames):
    image = _image(n_frames)
    model = Recording()
    out = apply_windowed(model, image, PARAMS, batch_size=3)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert torch.equal(out, image)
    n_windows = len(window_starts(n_frames, PARAMS, pad_tail=True))
    assert [c[0] for c in model.calls] == [3] * (n_windows // 3) + ([n_windows % 3] if n_windows % 3 else [])
    assert all(c[1:] == (1, PARAMS.n_mels, PARAMS.window_frames) for c in model.calls)


def test_the_tail_window_is_padded_with_silence_and_cropped_off_again():
    seen = []

    def model(x):
        seen.append(x.clone())
        return torch.ones_like(x)  # the loudest image: the padding must not show in the output

    out = apply_windowed(model, _image(100), PARAMS)
    windows = torch.cat(seen)
    assert len(windows) == 2 and out.shape == (PARAMS.n_mels, 100)
    assert (windows[1, 0, :, 100 - 48:] == -1.0).all()  # frames past the end: uint8 0, silence
    assert (out == 255).all()


def test_batch_size_and_other_images_do_not_change_the_result():
    model = _conv_model()
    images = [_image(300, 1), _image(40, 2), _image(112, 3)]
    alone = [apply_windowed(model, image, PARAMS, batch_size=1) for image in images]
    assert not torch.equal(alone[0][:, :64], images[0][:, :64])  # the model does change the image
    for batch_size in (2, 5, 64):
        assert torch.equal(apply_windowed(model, images[0], PARAMS, batch_size=batch_size), alone[0])
        together = apply_windowed_many(model, images, PARAMS, batch_size=batch_size)
        assert all(torch.equal(a, b) for a, b in zip(together.images, alone))
        assert len(together.seconds_overlap_add) == len(images) and together.seconds_model > 0


def test_perturb_gets_each_images_model_input():
    images = [_image(100, 1), _image(64, 2)]
    shapes = []

    def silence_second(i, x):
        shapes.append((i, len(x)))
        return torch.full_like(x, -1.0) if i == 1 else x

    out = apply_windowed_many(Recording(), images, PARAMS, batch_size=4, perturb=silence_second)
    assert shapes == [(0, 2), (1, 1)]
    assert torch.equal(out.images[0], images[0]) and (out.images[1] == 0).all()


def test_an_empty_image_is_an_error():
    with pytest.raises(ValueError, match="no frames"):
        apply_windowed(Recording(), _image(0), PARAMS)
