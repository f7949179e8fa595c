"""Demucs separation through the demucs package's own loading path, with a tiny random model
saved in Demucs' local-repo format."""
from __future__ import annotations

import pytest
import torch

from pipelines.separation import (
    ModelSpecError,
    load_model,
    resolve_model_spec,
    save_local_model,
    separate,
    tiny_model,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demucs_repo")
    save_local_model(tiny_model(seed=3), folder, "tiny")
    return folder


def test_saved_model_loads_through_demucs_get_model(model_dir):
    from demucs.demucs import Demucs
    from demucs.pretrained import get_model

    (path,) = model_dir.glob("*.th")
    assert path.name.startswith("tiny-") and len(path.stem.split("-")[1]) == 8  # <sig>-<sha256[:8]>
    direct = get_model("tiny", repo=model_dir)  # Demucs' LocalRepo: finds, checksums, builds
    assert isinstance(direct, Demucs) and direct.sources == ["drums", "bass", "other", "vocals"]
    reference = tiny_model(seed=3).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in direct.state_dict().items())
    # The --demucs-model forms: the folder, the file, the signature in the folder.
    for spec in (str(model_dir), str(path)):
        assert resolve_model_spec(spec) == ("tiny", model_dir)
        assert not load_model(spec).training


def test_bag_of_models_yaml(model_dir, tmp_path):
    from demucs.apply import BagOfModels

    save_local_model(tiny_model(seed=3), tmp_path, "tiny")
    (tmp_path / "mybag.yaml").write_text("models: ['tiny', 'tiny']\nweights: [[1,1,1,1],[1,1,1,1]]\n")
    assert resolve_model_spec(str(tmp_path)) == ("mybag", tmp_path)
    bag = load_model(str(tmp_path))
    assert isinstance(bag, BagOfModels) and len(bag.models) == 2
    mix = 0.1 * torch.randn(2, 44100)
    single = separate(load_model(str(model_dir)), mix, 44100, 22050)
    both = separate(bag, mix, 44100, 22050)
    # Two identical models with equal weights average to the single model's estimate.
    assert torch.allclose(single["drums"], both["drums"], atol=1e-5)


def test_bad_model_specs(tmp_path, model_dir):
    with pytest.raises(ModelSpecError, match="no such"):
        resolve_model_spec(str(tmp_path / "missing"))
    with pytest.raises(ModelSpecError, match="no Demucs model"):
        resolve_model_spec(str(tmp_path))
    save_local_model(tiny_model(), tmp_path, "a")
    save_local_model(tiny_model(), tmp_path, "b")
    with pytest.raises(ModelSpecError, match="several"):
        resolve_model_spec(str(tmp_path))
    assert resolve_model_spec(str(next(tmp_path.glob("b-*.th")))) == ("b", tmp_path)
    assert resolve_model_spec("htdemucs") == ("htdemucs", None)  # a pretrained name

    corrupt = tmp_path / "c"
    corrupt.mkdir()
    (path,) = model_dir.glob("*.th")
    (corrupt / path.name).write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelSpecError, match="checksum"):
        load_model(str(corrupt))

    from demucs.demucs import Demucs

    no_bass = tmp_path / "nobass"
    save_local_model(Demucs(sources=["drums", "other"], channels=4, depth=2), no_bass, "nb")
    with pytest.raises(ModelSpecError, match="no bass source"):
        load_model(str(no_bass))


def test_separate_returns_mono_bass_and_drums_at_the_target_rate(model_dir):
    model = load_model(str(model_dir))
    mix = 0.2 * torch.randn(2, 3 * 48000)  # stereo, another sample rate
    out = separate(model, mix, 48000, 22050)
    assert set(out) == {"bass", "drums"}
    for signal in out.values():
        assert signal.dtype == torch.float32 and signal.ndim == 1
        assert abs(signal.shape[0] - 3 * 22050) <= 1
        assert torch.isfinite(signal).all()
    assert not torch.equal(out["bass"], out["drums"])
    again = separate(model, mix, 48000, 22050)  # shifts=0: deterministic
    assert torch.equal(out["bass"], again["bass"])
    mono = separate(model, mix.mean(0, keepdim=True), 48000, 22050)  # mono input is upmixed
    assert mono["drums"].shape == out["drums"].shape
