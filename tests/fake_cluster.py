"""Ray's fake autoscaling cluster on 127.0.0.1, for tests of GPU scheduling without GPUs.

`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config CFG` runs the autoscaler with
the `fake_multinode` provider: a "node" it launches is one more local raylet with the
resources its node type declares (GPUs included).  The Ray wheel ships no example
config, so `write_config` writes one.  Only the processes started here are stopped
(by process group): never `ray stop`, which ends every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # what Ray's own AutoscalingCluster gives the head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, port: int, *, head_cpus: float, worker_types: dict,
                 idle_timeout_minutes: float = 10) -> Path:
    """An autoscaling config: a head with `head_cpus` CPUs and no GPU, plus `worker_types`
    ({name: {"resources": {...}, "max_workers": n}}), all starting at 0 nodes."""
    types = {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                  "max_workers": 0}}
    for name, spec in worker_types.items():
        types[name] = {"resources": spec["resources"], "node_config": {}, "min_workers": 0,
                       "max_workers": spec.get("max_workers", 1)}
    config = {
        "cluster_name": "cycledrums-fake",
        "max_workers": sum(t.get("max_workers", 1) for t in worker_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{port}"},
        "auth": {},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class FakeCluster:
    address: str
    temp_dir: Path
    process: subprocess.Popen
    env: dict
    base: Path  # the test's folder: the config, and the monitor logs kept after stop()

    def monitor_log(self) -> str:
        logs = self.temp_dir / "session_latest" / "logs"
        return "".join(p.read_text(errors="replace") for p in logs.glob("monitor*"))

    def client_env(self) -> dict:
        """Environment for a `cycledrums` subprocess that joins this cluster."""
        return dict(self.env, RAY_ADDRESS=self.address)

    def stop(self) -> None:
        """End every process this cluster started: they all share the `ray start` process group,
        and the launched fake nodes are found by their --temp-dir."""
        end_processes(_pids_using(self.temp_dir))
        logs = self.temp_dir / "session_latest" / "logs"
        for log in logs.glob("monitor*"):
            shutil.copy(log, self.base / log.name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def end_processes(pids: list[int], grace_s: float = 15) -> None:
    """SIGTERM each process, then SIGKILL those still alive after `grace_s`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.3)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pids_using(temp_dir: Path) -> list[int]:
    """Processes whose command line names our temp dir (raylets, GCS, monitor, workers)."""
    import psutil

    mark = str(temp_dir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        if proc.pid != os.getpid() and (mark in cmd or env.get("CYCLEDRUMS_FAKE_CLUSTER") == mark):
            found.append(proc.pid)
    return found


def start(base: Path, *, head_cpus: float, worker_types: dict, extra_env: dict | None = None,
          idle_timeout_minutes: float = 10, timeout_s: float = 120) -> FakeCluster:
    """Start the head (autoscaler included) and wait until a client can connect."""
    port = free_port()
    # Ray's sockets live under its temp dir and a Unix socket path has at most 107 bytes:
    # a pytest folder plus session_<date>_<pid>/sockets/plasma_store.1 can exceed it (CI's
    # pytest-112 and 7-digit pids did: every fake node failed to start), so keep it short.
    temp_dir = Path(tempfile.mkdtemp(prefix="cdfake-", dir="/tmp"))
    cfg = write_config(base / "autoscaling.yaml", port, head_cpus=head_cpus, worker_types=worker_types,
                       idle_timeout_minutes=idle_timeout_minutes)
    env = dict(os.environ, RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="disabled",
               RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
               CYCLEDRUMS_FAKE_CLUSTER=str(temp_dir), RAY_USAGE_STATS_ENABLED="0", **(extra_env or {}))
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a real multi-node cluster, however started
    ray_bin = str(Path(sys.executable).with_name("ray"))
    process = subprocess.Popen(
        [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--autoscaling-config", str(cfg), "--temp-dir", str(temp_dir), "--num-cpus", str(head_cpus),
         "--num-gpus", "0", "--include-dashboard", "false", "--dashboard-host", "127.0.0.1",
         "--object-store-memory", str(300 << 20), "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    client_env = {k: v for k, v in env.items() if k != "RAY_OVERRIDE_NODE_ID_FOR_TESTING"}
    cluster = FakeCluster(address, temp_dir, process, client_env, base)
    deadline = time.time() + timeout_s
    probe = "import ray; ray.init(address=%r); print(ray.cluster_resources())" % address
    while time.time() < deadline:
        if process.poll() is not None:
            cluster.stop()
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            done = subprocess.run([sys.executable, "-c", probe], env=client_env, capture_output=True,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired:
            # On a busy machine a client can miss one of Ray's 5 s connect limits and then wait
            # forever: that probe is killed, and the next one tries again until the deadline.
            continue
        if done.returncode == 0:
            return cluster
        time.sleep(1)
    cluster.stop()
    raise RuntimeError("the fake cluster did not come up in time")


def summary_of(path: Path) -> dict:
    return json.loads(Path(path).read_text())
