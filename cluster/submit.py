"""`cycledrums submit`: run any cycledrums job on a Ray cluster through the Ray Jobs API.

The job's command line becomes the entrypoint (`cycledrums JOB ARGS...`, shell-quoted),
the project folder travels as the runtime environment's `working_dir` (so the cluster
runs the code you have here), and the project's dependencies as its `pip` list unless
the cluster's image already has them (`--no-install`).  Logs stream back while the job
runs; the exit status is the job's.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from cluster.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never shipped to the cluster: environments, VCS data, caches, build and run outputs.
# gitwildmatch patterns, matched like Ray matches them: path relative to the project, no
# trailing slash, so a matching folder is skipped whole (never walked file by file).
WORKING_DIR_EXCLUDES = (
    ".venv", "/venv", ".git", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", "/build", "/dist", "/demo-output", "/runs",
)
DEFAULT_MAX_FILE_MB = 8.0
# Runtime-env keys that already say how to install dependencies: then we add no pip list.
_INSTALL_KEYS = ("pip", "uv", "conda", "image_uri", "container", "py_executable")
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_AGENT_WAIT_SECONDS = 60.0


class SubmitError(UserError):
    """Submission could not happen (bad address, auth, runtime env); a user-facing message."""


@dataclass
class SubmitRequest:
    job: str
    job_args: list[str]
    address: str = DEFAULT_ADDRESS
    install: bool = True
    runtime_env_file: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    submission_id: str | None = None
    wait: bool = True


# ----------------------------------------------------------------- entrypoint


def entrypoint_command(job: str, job_args: list[str], installed: bool) -> str:
    """The shell command the cluster runs for JOB.

    With the project installed on the cluster it is the console command; when only the
    working_dir carries the code (dependencies from the runtime env's pip list) there is
    no console script, and `python -m cycledrums_cli` runs the same main() from it.
    """
    program = ["cycledrums"] if installed else ["python", "-m", "cycledrums_cli"]
    return shlex.join(program + [job, *job_args])


# ----------------------------------------------------------------- runtime env


def project_root() -> Path | None:
    """The folder holding cycledrums_cli.py and pyproject.toml, or None for a wheel install."""
    import cycledrums_cli

    root = Path(cycledrums_cli.__file__).resolve().parent
    return root if (root / "pyproject.toml").is_file() else None


def project_requirements(root: Path | None) -> list[str]:
    """The project's runtime dependencies, without Ray (the cluster provides Ray itself):
    from ROOT/pyproject.toml (what the shipped code needs), else the installed metadata."""
    requirements = None
    if root is not None and (root / "pyproject.toml").is_file():
        try:
            import tomllib  # Python >= 3.11
        except ModuleNotFoundError:
            tomllib = None
        if tomllib is not None:
            with open(root / "pyproject.toml", "rb") as f:
                requirements = list(tomllib.load(f)["project"].get("dependencies", []))
    if requirements is None:
        from importlib.metadata import PackageNotFoundError, requires

        try:
            requirements = [r for r in requires("cycledrums") or [] if "extra ==" not in r]
        except PackageNotFoundError:
            requirements = []
    # Installing another Ray into the job's environment would break the job's Ray.
    return [r for r in requirements if _requirement_name(r) != "ray"]


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)", requirement)
    return match.group(1).lower().replace("_", "-") if match else ""


def large_files(root: Path, excludes: list[str], max_bytes: int) -> list[str]:
    """Files under root bigger than max_bytes that the excludes do not already drop,
    as root-anchored exclude patterns (Ray caps a working_dir at a few hundred MiB)."""
    from ray._private.thirdparty.pathspec import PathSpec  # the matcher Ray applies to excludes

    spec = PathSpec.from_lines("gitwildmatch", excludes)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not spec.match_file((rel_dir / d).as_posix())]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if spec.match_file(rel):
                continue
            try:
                if os.path.getsize(os.path.join(dirpath, name)) > max_bytes:
                    found.append("/" + rel)
            except OSError:
                continue
    return sorted(found)


def load_runtime_env_file(path: str) -> dict:
    """A runtime env from a YAML or JSON file (JSON is YAML)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise SubmitError(f"--runtime-env: no such file: {path}") from err
    except yaml.YAMLError as err:
        raise SubmitError(f"--runtime-env: {path} is not valid YAML/JSON: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SubmitError(f"--runtime-env: {path} must hold a mapping (runtime_env fields), "
                          f"not a {type(data).__name__}")
    return data


def build_runtime_env(req: SubmitRequest) -> dict:
    """working_dir (the project, minus environments and big files) + pip + env_vars,
    then the user's --runtime-env file on top (its keys win; env_vars are merged)."""
    env: dict = {}
    root = Path(req.working_dir).resolve() if req.working_dir else project_root()
    if root is None and req.install:
        raise SubmitError("cycledrums is installed without its project folder, so there is no code "
                          "to ship: pass --working-dir PROJECT, or --no-install for a cluster whose "
                          "image already has cycledrums")
    if root is not None:
        if not root.is_dir():
            raise SubmitError(f"--working-dir: not a folder: {root}")
        excludes = list(WORKING_DIR_EXCLUDES)
        big = large_files(root, excludes, int(req.max_file_mb * 1024 * 1024))
        if big:
            log.info("not shipping %d file(s) over %g MB: %s", len(big), req.max_file_mb,
                     ", ".join(big[:5]) + (" ..." if len(big) > 5 else ""))
        env["working_dir"] = str(root)
        env["excludes"] = excludes + big
    user = load_runtime_env_file(req.runtime_env_file) if req.runtime_env_file else {}
    if req.install and not any(key in user for key in _INSTALL_KEYS):
        packages = project_requirements(root)
        if packages:
            env["pip"] = packages
    env_vars = dict(req.env_vars)
    env_vars.update(user.pop("env_vars", {}) or {})
    env.update(user)
    if env_vars:
        env["env_vars"] = env_vars
    return env


# ----------------------------------------------------------------- auth


def _is_loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_headers(address: str) -> dict[str, str]:
    """The bearer token for a cluster with token authentication, if one is available.

    $RAY_AUTH_TOKEN, else the file at $RAY_AUTH_TOKEN_PATH, are sent to any address (the
    user set them for this).  Ray's own default token file (~/.ray/auth_token, written when
    a local Ray starts) is sent only to a loopback address: it belongs to the clusters of
    this machine (or to one reached through a port-forward / `ray dashboard` tunnel).
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if not token and token_path:
        try:
            token = Path(token_path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as err:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={token_path}: cannot read the token: {err}") from err
    if not token and _is_loopback(address):
        default = Path.home() / ".ray" / "auth_token"
        if default.is_file():
            token = default.read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


# ----------------------------------------------------------------- the job


def normalize_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SubmitError(f"--address must be the Ray dashboard's http(s)://HOST:PORT "
                          f"(the Jobs API, usually port 8265), got {address!r}")
    return address


def connect(address: str):
    """A JobSubmissionClient for the dashboard at `address`, with a clear error if it is
    unreachable or refuses our credentials."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers(address))
    except AuthenticationError as err:
        raise SubmitError(_auth_message(address, err)) from err
    except ConnectionError as err:
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: is the cluster up and its "
                          f"dashboard port forwarded (`ray dashboard cluster/aws.yaml`, "
                          f"`kubectl port-forward svc/...-head-svc 8265:8265`)? ({err})") from err


def _auth_message(address: str, err: Exception) -> str:
    return (f"the Ray cluster at {address} requires token authentication and rejected the request; "
            f"set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token. ({err})")


def submit(client, entrypoint: str, runtime_env: dict, submission_id: str | None) -> str:
    """Submit, retrying while a freshly started cluster has no job agent yet."""
    from ray.exceptions import AuthenticationError

    deadline = time.monotonic() + _AGENT_WAIT_SECONDS
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                     submission_id=submission_id)
        except AuthenticationError as err:
            raise SubmitError(_auth_message(client.get_address(), err)) from err
        except RuntimeError as err:
            if "No available agent" in str(err) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise SubmitError(f"the cluster refused the job: {err}") from err
        except OSError as err:  # requests' connection errors
            raise SubmitError(f"cannot submit to {client.get_address()}: {err}") from err


async def _stream_logs(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def follow(client, job_id: str, out=None, poll_seconds: float = 1.0) -> str:
    """Stream the job's logs to `out` until it ends; return its final status name."""
    out = out or sys.stdout
    try:
        asyncio.run(_stream_logs(client, job_id, out))
    except Exception as err:  # the log stream broke (network, proxy); the job may still run
        log.warning("log stream of %s ended early (%s); polling its status", job_id, err)
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in _TERMINAL:
            return status
        time.sleep(poll_seconds)


def run_submit(req: SubmitRequest, out=None, err=None) -> int:
    """Submit req's job; with wait, stream its logs and return 0 iff it SUCCEEDED."""
    out, err = out or sys.stdout, err or sys.stderr
    address = normalize_address(req.address)
    runtime_env = build_runtime_env(req)
    entrypoint = entrypoint_command(req.job, req.job_args, installed=not req.install)
    client = connect(address)
    log.info("runtime env: %s", describe(runtime_env))
    job_id = submit(client, entrypoint, runtime_env, req.submission_id)
    print(f"submitted {job_id} to {address}: {entrypoint}", file=err, flush=True)
    if not req.wait:
        print(job_id, file=out)
        return 0
    try:
        status = follow(client, job_id, out)
        info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following {job_id}; it keeps running on the cluster. Stop it with: "
              f"ray job stop --address {address} {job_id}", file=err)
        raise
    except (ConnectionError, OSError) as exc:  # requests' errors are OSErrors too
        raise SubmitError(f"lost the connection to {address} while following {job_id}; it may "
                          f"still be running (ray job status --address {address} {job_id}): "
                          f"{exc}") from exc
    if status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED", file=err)
        return 0
    print(f"job {job_id} {status}: {info.message or 'no message'}", file=err)
    return 1


# ----------------------------------------------------------------- local validation


def validate_job_args(job: str, job_args: list[str]) -> None:
    """Parse `cycledrums JOB ARGS` with the local parser, so a typo fails here, not on the
    cluster.  Raises SubmitError with argparse's message; a job's --help prints here."""
    from cycledrums_cli import build_parser

    parser = build_parser()
    jobs = job_names(parser)
    if job not in jobs:
        raise SubmitError(f"unknown job {job!r}; jobs: {', '.join(jobs)}")
    if "-h" in job_args or "--help" in job_args:
        parser.parse_args([job, "--help"])  # prints the job's help and exits 0
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        try:
            parser.parse_args([job, *job_args])
        except SystemExit as exc:
            if exc.code:
                message = captured.getvalue().strip().splitlines()
                raise SubmitError(f"invalid arguments for {job!r} (checked locally; --no-validate "
                                  f"skips this): {message[-1] if message else exc}") from None


def job_names(parser=None) -> list[str]:
    """The subcommands a cluster can run: every registered one except submit itself."""
    import argparse

    from cycledrums_cli import build_parser

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [name for name in action.choices if name != "submit"]
    return []


def describe(runtime_env: dict) -> str:
    """One line for logs: what travels with the job."""
    shown = {k: (f"{len(v)} packages" if k == "pip" else v) for k, v in runtime_env.items()
             if k != "excludes"}
    return json.dumps(shown)
