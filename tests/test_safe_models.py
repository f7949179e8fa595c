"""Model files are read weights-only: a crafted pickle is refused and its code never runs."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from pipelines.separation import ModelSpecError, load_model, save_local_model, tiny_model


class _RunsCode:
    """Pickles as a call to os.system: what a malicious model file carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_demucs_file(folder, marker) -> None:
    """A Demucs local-repo .th whose package runs a shell command when fully unpickled."""
    model = tiny_model(seed=1)
    args, kwargs = model._init_args_kwargs
    package = {"klass": model.__class__, "args": args, "kwargs": kwargs,
               "state": {"state": _RunsCode(marker)}, "training_args": {}}
    buf = io.BytesIO()
    torch.save(package, buf)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.th").write_bytes(buf.getvalue())


def test_crafted_demucs_file_is_refused_and_its_code_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    _crafted_demucs_file(tmp_path / "models", marker)
    with pytest.raises(ModelSpecError, match="posix.system|os.system|refused") as info:
        load_model(str(tmp_path / "models"))
    assert "evil.th" in str(info.value)
    assert not marker.exists()
    # The unsafe load really would have run it (the test's crafted file is live).
    torch.load(tmp_path / "models" / "evil.th", weights_only=False)
    assert marker.exists()


def test_prepare_refuses_the_crafted_model_before_ray(tmp_path, capsys):
    from cycledrums_cli import main

    marker = tmp_path / "code-ran"
    _crafted_demucs_file(tmp_path / "models", marker)
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "song.flac").write_bytes((Path(__file__).parent / "data" / "lithium_bass_8s.flac").read_bytes())
    rc = main(["prepare", str(songs), str(tmp_path / "out"), "--layout", "mixes",
               "--demucs-model", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert rc == 2 and "evil.th" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_real_local_models_still_load(tmp_path):
    save_local_model(tiny_model(seed=3), tmp_path, "tiny")
    model = load_model(str(tmp_path))
    reference = tiny_model(seed=3).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_help_states_the_trust_rule(capsys):
    from cycledrums_cli import main

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "weights-only" in out and "trust" in out
