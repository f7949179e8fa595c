"""Bad input from a user: a message and exit status 2, never a traceback (unless -v); nothing lost."""
from __future__ import annotations

import numpy as np
import soundfile as sf

from cycledrums_cli import main


def _tone(path, seconds=3.0, rate=22050):
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 110 * t)).astype(np.float32), rate)


def test_user_error_prints_a_message_and_v_adds_the_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.wav"
    assert main(["roundtrip", str(missing), str(tmp_path / "out.wav")]) == 2
    err = capsys.readouterr().err
    assert "missing.wav" in err and "Traceback" not in err
    assert main(["-v", "roundtrip", str(missing), str(tmp_path / "out.wav")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_every_job_error_class_is_a_user_error():
    from cluster.errors import CliError, UserError
    from infer.generate import GenerateError
    from infer.sources import SourceError
    from pipelines.audio import AudioError
    from pipelines.catalog import CatalogError
    from pipelines.prepare import PrepareError
    from pipelines.separation import ModelSpecError
    from train.checkpoint import CheckpointNotFoundError
    from train.trainer import TrainSetupError

    for cls in (CliError, GenerateError, SourceError, AudioError, CatalogError, PrepareError,
                ModelSpecError, CheckpointNotFoundError, TrainSetupError):
        assert issubclass(cls, UserError), cls
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_roundtrip_refuses_to_replace_its_input_and_explains_bad_paths(tmp_path, capsys):
    song = tmp_path / "song.wav"
    _tone(song)
    original = song.read_bytes()
    assert main(["roundtrip", str(song), str(song)]) == 2
    assert main(["roundtrip", str(song), str(tmp_path / "." / "song.wav")]) == 2
    (tmp_path / "link.wav").symlink_to(song)
    assert main(["roundtrip", str(tmp_path / "link.wav"), str(song)]) == 2
    assert song.read_bytes() == original  # the original is untouched
    err = capsys.readouterr().err
    assert "is IN" in err and "Traceback" not in err

    assert main(["roundtrip", str(song), str(tmp_path)]) == 2  # OUT is a folder
    assert "folder" in capsys.readouterr().err
    short = tmp_path / "short.wav"
    _tone(short, seconds=0.01)
    assert main(["roundtrip", str(short), str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert "too short" in err and "Traceback" not in err
    assert not (tmp_path / "o.wav").exists()
    assert main(["roundtrip", str(song), str(tmp_path / "o.wav"), "--iterations", "2"]) == 0
