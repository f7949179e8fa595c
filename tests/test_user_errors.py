"""Bad input from a user: a message and exit status 2, never a traceback (unless -v); nothing lost."""
from __future__ import annotations

from pathlib import Path

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
    assert main(["roundtrip", str(song), str(tmp_path / "o.wav"), "--griffin-lim-iters", "2"]) == 0


def test_jobs_refuse_an_out_that_is_a_file_in_one_line(tmp_path, capsys):
    """#31 item 10: synth, grooves and demo with OUT an existing file: exit 2, one line, no traceback."""
    from conftest import DATA

    out = tmp_path / "taken"
    out.write_text("keep me")
    for argv in (["synth", str(out), "--tracks", "2", "--seconds", "1"],
                 ["synth", str(out / "below"), "--tracks", "2", "--seconds", "1"],
                 ["grooves", str(DATA / "groove"), str(out), "--in-process"],
                 ["demo", str(out), "--quick"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(out) in err, (argv, err)
        assert err.strip().count("\n") == 0, err
    assert out.read_text() == "keep me"


def test_grooves_checks_the_soundfont_once_before_rendering(tmp_path, capsys):
    """#31 item 10: --soundfont naming a file that is not a SoundFont fails at once in one line,
    before any take is tried (it used to fail every take, with a traceback each)."""
    from conftest import DATA

    fake = tmp_path / "drums.sf2"
    fake.write_bytes(b"MThd" + bytes(200))
    out = tmp_path / "corpus"
    assert main(["grooves", str(DATA / "groove"), str(out), "--soundfont", str(fake), "--in-process"]) == 2
    err = capsys.readouterr().err
    assert "not a SoundFont" in err and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err
    assert not (out / "_errors.csv").exists()  # nothing was rendered


def test_ray_start_up_timeouts_are_one_line_errors(tmp_path, monkeypatch, capsys):
    """#31 item 10: Ray's "node timed out during startup" (a machine under load) is a one-line
    error saying what to try, not Ray's traceback; other errors of ray.init pass unchanged."""
    import pytest
    import ray

    from cluster.ray_runtime import RayStartError, init_ray

    calls = []

    def slow_start(*args, **kwargs):
        calls.append(kwargs)
        raise Exception("The current node timed out during startup. This could happen because some "
                        "of the raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", slow_start)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with pytest.raises(RayStartError, match="the local Ray did not start in time.*less busy"):
        init_ray()
    assert calls[-1] == "shutdown"  # what had started is stopped
    with pytest.raises(RayStartError, match="the Ray cluster at 127.0.0.1:1 did not answer in time"):
        init_ray("127.0.0.1:1")
    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):
        init_ray()
    # Through a job: exit 2 and one line.
    monkeypatch.setattr(ray, "init", slow_start)
    from conftest import DATA

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["grooves", str(DATA / "groove"), str(tmp_path / "out"), "--max-tracks", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the local Ray did not start in time" in err, err
    assert err.strip().count("\n") == 0, err


# The two modules that drive the command line itself: the demo runs every job through it, and
# submit checks a job's arguments with its parser before sending them to a cluster.
COMMAND_DRIVERS = {"cycledrums_demo.py", "cluster/submit.py"}


def test_no_library_module_imports_the_entry_point():
    """Errors come from cluster/errors.py and the shared job options from cluster/job_options.py: the
    library never imports cycledrums_cli (which imports every cli.py), so the house has no cycle."""
    import ast

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for package in ("pipelines", "train", "infer", "cluster"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in COMMAND_DRIVERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) else [])
                if "cycledrums_cli" in names:
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


# The floors of the house, ground first: a module may import its own floor and the ones below.
FLOORS = ("cluster", "pipelines", "train", "infer")


def test_the_house_stacks_without_an_arrow_back_up():
    """cluster/ (errors, options, resources, Ray) is the ground floor every job stands on; then the
    data side, training, inference; the demo and the entry point sit on top.  No module imports a
    floor above its own, lazily or not (the command drivers aside: they run the command line)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    upward = []
    for level, package in enumerate(FLOORS):
        above = set(FLOORS[level + 1:]) | {"cycledrums_demo", "cycledrums_cli"}
        for path in sorted((root / package).rglob("*.py")):
            if path.relative_to(root).as_posix() in COMMAND_DRIVERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                upward += [f"{path.relative_to(root)}:{node.lineno} -> {n}" for n in names
                           if n.split(".")[0] in above]
    assert not upward, upward
