"""`cycledrums submit` against a real Ray head on 127.0.0.1, plus its offline parts.

The head is started with `ray start --head --block` (from the venv) on free ports, with
token authentication on, in its own process group.  It is stopped by signalling that
process (which shuts down the Ray processes it started) and then killing any of its
own children still alive, by PID: never `ray stop`, which would kill every Ray on the
machine, including other test sessions'.  These tests do not use the `ray_local` fixture.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster.submit import (
    SubmitError,
    SubmitRequest,
    auth_headers,
    build_runtime_env,
    entrypoint_command,
    project_requirements,
    project_root,
    validate_job_args,
)

VENV_BIN = Path(sys.executable).parent
CYCLEDRUMS = str(VENV_BIN / "cycledrums")
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A Ray head in a child process: 4 logical CPUs, dashboard (Jobs API) on 127.0.0.1."""

    def __init__(self, token: str):
        self.token = token
        self.dashboard_port = _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # Short path: Ray's Unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="cdrh", dir="/tmp")
        self.env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        ports = {flag: _free_port() for flag in ("--port", "--dashboard-agent-listen-port",
                                                   "--ray-client-server-port")}
        command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=4",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.temp_dir}",
                   "--object-store-memory=300000000", "--disable-usage-stats",
                   *(f"{flag}={port}" for flag, port in ports.items())]
        self.log = open(os.path.join(self.temp_dir, "ray-start.log"), "w")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the dashboard answers (401 without a token is an answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}: "
                                   f"{Path(self.log.name).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.address + "/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"no Ray dashboard at {self.address} after {timeout:.0f} s")

    def stop(self) -> None:
        import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.process.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # Whatever is left (job drivers, workers) gets the same treatment, by PID.
        for signal_them, grace in ((psutil.Process.terminate, 5), (psutil.Process.kill, 5)):
            alive = [p for p in children if p.is_running()]
            for proc in alive:
                try:
                    signal_them(proc)
                except psutil.Error:
                    pass
            psutil.wait_procs(alive, timeout=grace)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _clean_env(**extra) -> dict:
    """This environment without Ray addresses or auth settings, with the venv on PATH (as an
    activated venv would have it, so the cluster finds `cycledrums` and `python`)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ray_head():
    head = RayHead(token=secrets.token_hex(16))
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()


def _submit(head: RayHead, *args: str, token: str | None = "", timeout: float = 240.0,
            home: str | None = None) -> subprocess.CompletedProcess:
    """`cycledrums submit ARGS --address HEAD` in a fresh process, like a user would run it."""
    env = _clean_env()
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token or head.token
    if home:
        env["HOME"] = home
    return subprocess.run([CYCLEDRUMS, "submit", *args, "--address", head.address],
                          env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------ against a real head


@pytest.mark.timeout(300)
def test_submitted_synth_job_writes_its_data_set(ray_head, tmp_path):
    out = tmp_path / "synth out"  # a space: the entrypoint must quote it
    result = _submit(ray_head, "--no-install", "synth", str(out), "--tracks", "2",
                     "--seconds", "8", "--seed", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 2 tracks" in result.stdout  # the job's own output, streamed back
    assert "SUCCEEDED" in result.stderr
    tracks = sorted(p for p in out.glob("*/*") if p.is_dir())
    assert sorted(t.parent.name for t in tracks) == ["test", "train"]  # 2 tracks, one per split
    for track in tracks:
        assert {f.name for f in track.iterdir()} >= {"mixture.wav", "bass.wav", "drums.wav", "other.wav"}


@pytest.mark.timeout(300)
def test_submitted_prepare_job_writes_windows(ray_head, tmp_path):
    from pipelines.synth import write_dataset
    import pyarrow.parquet as pq

    songs, windows = tmp_path / "songs", tmp_path / "windows"
    write_dataset(songs, tracks=3, seconds=10.0, seed=1)
    result = _submit(ray_head, "prepare", str(songs), str(windows), "--no-install")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((windows / "_summary.json").read_text())
    assert summary["tracks_ok"] == 3 and summary["tracks_failed"] == 0
    files = sorted(windows.glob("*/*.parquet"))
    assert {f.parent.name for f in files} == {"train", "test"}
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    assert rows == summary["windows_written"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_submission_installs_dependencies_in_the_runtime_env(ray_head, tmp_path):
    """Without --no-install the job gets a pip virtualenv (here every requirement is already
    satisfied by the cluster's site-packages, so no download) and runs the shipped code."""
    out = tmp_path / "data"
    result = _submit(ray_head, "synth", str(out), "--tracks", "2", "--seconds", "8", timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "python -m cycledrums_cli synth" in result.stderr
    assert len(list(out.glob("*/*/bass.wav"))) == 2


@pytest.mark.timeout(300)
def test_failing_job_exits_nonzero_with_its_error(ray_head, tmp_path):
    missing = tmp_path / "no-such-songs"
    result = _submit(ray_head, "prepare", str(missing), str(tmp_path / "windows"), "--no-install")
    assert result.returncode == 1
    assert "FAILED" in result.stderr
    assert f"input not found: {missing}" in result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_missing_or_wrong_token_is_a_clear_error(ray_head, tmp_path):
    result = _submit(ray_head, "--no-install", "synth", str(tmp_path / "x"), token=None,
                     home=str(tmp_path))  # no ~/.ray/auth_token there either
    assert result.returncode == 2
    assert "requires token authentication" in result.stderr and "RAY_AUTH_TOKEN" in result.stderr
    result = _submit(ray_head, "--no-install", "synth", str(tmp_path / "x"), token="wrong")
    assert result.returncode == 2 and "rejected" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.timeout(300)
def test_ray_job_submit_runs_a_job_too(ray_head, tmp_path):
    out = tmp_path / "data"
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_head.token)
    result = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head.address, "--",
         "cycledrums", "synth", str(out), "--tracks", "2", "--seconds", "8"],
        env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(list(out.glob("*/*/bass.wav"))) == 2


@pytest.mark.timeout(60)
def test_unreachable_address_is_a_clear_error(tmp_path):
    port = _free_port()
    result = subprocess.run([CYCLEDRUMS, "submit", "synth", str(tmp_path / "x"), "--address",
                             f"http://127.0.0.1:{port}"], env=_clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in result.stderr


# ------------------------------------------------------------ offline parts


def test_entrypoint_is_the_job_command_line_quoted():
    args = ["out dir/with 'quotes'", "--seconds", "8", "$(rm -rf /)"]
    command = entrypoint_command("synth", args, installed=True)
    assert shlex.split(command) == ["cycledrums", "synth", *args]
    assert shlex.split(entrypoint_command("prepare", ["a", "b"], installed=False)) == \
        ["python", "-m", "cycledrums_cli", "prepare", "a", "b"]


def test_runtime_env_ships_the_project_and_its_dependencies():
    env = build_runtime_env(SubmitRequest(job="synth", job_args=[]))
    assert env["working_dir"] == str(ROOT) == str(project_root())
    assert {".venv", ".git", "__pycache__"} <= set(env["excludes"])
    names = {p.split("=")[0].split(">")[0].split("[")[0].strip() for p in env["pip"]}
    assert {"torch", "torchaudio", "demucs", "pyarrow", "s3fs"} <= names
    assert "ray" not in names  # the cluster's own Ray must not be replaced
    assert env["pip"] == project_requirements(ROOT)
    assert "pip" not in build_runtime_env(SubmitRequest(job="synth", job_args=[], install=False))


def test_runtime_env_file_is_merged_over_the_generated_one(tmp_path):
    extra = tmp_path / "env.yaml"
    extra.write_text("pip: [numpy]\nenv_vars: {A: from-file}\nconfig: {setup_timeout_seconds: 900}\n")
    env = build_runtime_env(SubmitRequest(job="synth", job_args=[], runtime_env_file=str(extra),
                                          env_vars={"A": "flag", "B": "flag"}))
    assert env["pip"] == ["numpy"]
    assert env["env_vars"] == {"A": "from-file", "B": "flag"}
    assert env["config"] == {"setup_timeout_seconds": 900}
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, error in (("list.json", "mapping"), ("nope.yaml", "no such file")):
        with pytest.raises(SubmitError, match=error):
            build_runtime_env(SubmitRequest(job="synth", job_args=[],
                                            runtime_env_file=str(tmp_path / name)))


def test_large_files_and_environments_stay_home(tmp_path):
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "code.py").write_text("x = 1\n")
    (project / "pkg" / "weights.bin").write_bytes(b"\0" * (2 * 1024 * 1024))
    (project / ".venv" / "lib").mkdir(parents=True)
    (project / ".venv" / "lib" / "huge.so").write_bytes(b"\0" * (2 * 1024 * 1024))
    env = build_runtime_env(SubmitRequest(job="synth", job_args=[], working_dir=str(project),
                                          max_file_mb=1, install=False))
    assert env["working_dir"] == str(project)
    assert "/pkg/weights.bin" in env["excludes"]
    assert not any("huge.so" in e for e in env["excludes"])  # .venv is excluded whole

    # Ray's own packaging honours the excludes: only the code is left.
    from ray._private.runtime_env.packaging import _get_excludes, _dir_travel

    shipped = []
    _dir_travel(project, [_get_excludes(project, env["excludes"])],
                lambda p: shipped.append(p.relative_to(project).as_posix()) if p.is_file() else None,
                include_gitignore=False)
    assert shipped == ["pkg/code.py"]


def test_token_comes_from_the_environment_and_local_file_only_for_loopback(tmp_path, monkeypatch):
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers("http://127.0.0.1:8265") == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("local-token\n")
    assert auth_headers("http://127.0.0.1:8265") == {"Authorization": "Bearer local-token"}
    assert auth_headers("http://localhost:8265") == {"Authorization": "Bearer local-token"}
    assert auth_headers("http://10.0.0.5:8265") == {}  # never sent to another machine
    token_file = tmp_path / "cluster-token"
    token_file.write_text("file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert auth_headers("http://10.0.0.5:8265") == {"Authorization": "Bearer file-token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert auth_headers("http://10.0.0.5:8265") == {"Authorization": "Bearer env-token"}


def test_submit_options_may_follow_the_job_arguments():
    from cluster.cli import _split_submit_options
    from cycledrums_cli import build_parser

    args = build_parser().parse_args(
        ["submit", "--no-wait", "train", "data", "run", "--max-steps", "5", "--address",
         "http://h:8265", "--env", "A=1", "--", "--address", "verbatim"])
    assert args.job == "train"
    job_args = _split_submit_options(args)
    assert job_args == ["data", "run", "--max-steps", "5", "--address", "verbatim"]
    assert args.address == "http://h:8265" and args.env == ["A=1"] and args.wait is False


def test_job_arguments_are_checked_locally_before_submitting(capsys):
    with pytest.raises(SubmitError, match="unknown job 'nope'"):
        validate_job_args("nope", [])
    with pytest.raises(SubmitError, match="unknown job 'submit'"):
        validate_job_args("submit", ["synth", "x"])
    with pytest.raises(SubmitError, match="invalid arguments for 'synth'.*--tracks"):
        validate_job_args("synth", ["out", "--tracks", "many"])
    validate_job_args("train", ["data", "run", "--max-steps", "3"])  # fine: no error

    from cycledrums_cli import main

    assert main(["submit", "synth", "--address", "http://127.0.0.1:1"]) == 2  # OUT missing
    assert "the following arguments are required: OUT" in capsys.readouterr().err
