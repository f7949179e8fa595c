"""A real multi-node Ray cluster on 127.0.0.1: one head and N worker nodes, each started with
`ray start --block` in its own session, so each node (raylet, object store, agents, workers) is
its own set of processes that a test can kill alone, as a lost machine would vanish.

Every process is ended by the process ids started here (the `ray start` of each node and its
descendants): never `ray stop`, which ends every Ray on the machine.  The GCS checks node health
every second and declares a node dead after 4 missed checks (Ray's defaults: 3 s and 5), so a
killed node is noticed in about 4 s instead of 15.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fake_cluster import end_processes, free_port

FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
                      "RAY_health_check_failure_threshold": "4"}


@dataclass
class Node:
    name: str
    process: subprocess.Popen  # `ray start --block`, leader of its own session
    cpus: float = 0.0
    args: list = field(default_factory=list)  # how to start it again
    log: Path | None = None
    killed: bool = False
    starts: int = 1

    def pids(self) -> list[int]:
        """The node's processes: its `ray start` and every descendant (raylet, agents, workers;
        a worker runs in a process group of its own, so the group alone is not the node)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [self.process.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> list[int]:
        """SIGKILL the node's processes, nothing else; returns their ids."""
        pids = self.pids()
        self.killed = True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        return pids


@dataclass
class LocalCluster:
    address: str
    temp_dir: Path
    env: dict
    nodes: list[Node] = field(default_factory=list)  # the head first
    node_dirs: list[Path] = field(default_factory=list)  # the worker nodes' temp dirs

    def client_env(self) -> dict:
        """Environment for a `cycledrums` subprocess that joins this cluster."""
        return dict(self.env, RAY_ADDRESS=self.address)

    def add_worker(self, cpus: float, name: str | None = None, resources: str | None = None) -> Node:
        # Its own temp dir, as on a machine of its own: with one shared logs folder, every node's
        # log monitor would stream every worker's output to the driver (each line N times).
        own = Path(tempfile.mkdtemp(prefix="cdw-", dir="/tmp"))
        self.node_dirs.append(own)
        args = [sys.executable, "-c", _WORKER_START, "start", "--address", self.address, "--temp-dir", str(own), "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(cpus), "--num-gpus", "0", "--object-store-memory", str(200 << 20),
                "--block"]
        if resources:
            args += ["--resources", resources]
        name = name or f"worker-{len(self.nodes)}"
        log = self.temp_dir / f"{name}.log"
        node = Node(name, _spawn(args, self.env, log), cpus, args, log)
        self.nodes.append(node)
        return node

    def alive_nodes(self) -> int:
        probe = ("import ray; ray.init(address=%r, log_to_driver=False); "
                 "print(sum(1 for n in ray.nodes() if n['Alive']))" % self.address)
        done = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True,
                              timeout=120)
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else -1

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for node in self.nodes:
                if node.killed or node.process.poll() is None:
                    continue
                # Ray gives a joining raylet 30 s to register (a constant in ray._private.node);
                # on a loaded machine it can miss that: start it again, twice at most.
                if node.name == "head" or node.starts >= 3:
                    raise RuntimeError(f"ray start exited on {node.name}: "
                                       + node.log.read_text(errors="replace")[-2000:])
                node.process = _spawn(node.args, self.env, node.log)
                node.starts += 1
            if self.alive_nodes() == count:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {count} live nodes in {timeout_s:.0f} s")

    def stop(self) -> None:
        """End every process of every node (SIGTERM, then SIGKILL after 15 s), by process id."""
        end_processes([pid for node in self.nodes for pid in node.pids()])
        for node in self.nodes:
            try:
                node.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for folder in [self.temp_dir, *self.node_dirs]:
            shutil.rmtree(folder, ignore_errors=True)


_WORKER_START = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`ray start` in a session of its own (so it is a node apart), its output in `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start(head_cpus: float, worker_cpus: list[float], extra_env: dict | None = None,
          timeout_s: float = 120) -> LocalCluster:
    """A head with `head_cpus` logical CPUs and one worker node per entry of `worker_cpus`, all on
    127.0.0.1; returns once every node has joined."""
    port = free_port()
    # Ray's Unix sockets live under the temp dir, and their path has at most 107 bytes: keep it short.
    temp_dir = Path(tempfile.mkdtemp(prefix="cdnodes-", dir="/tmp"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **FAST_HEALTH_CHECKS,
               **(extra_env or {}))
    env.pop("RAY_ADDRESS", None)
    # Loopback only: Ray turns 127.0.0.1 into the machine's network address unless multi-node
    # clusters are switched off, as on macOS (cluster/ray_runtime.keep_local).  Every process
    # runs with the switch off; a worker node's `ray start` turns it back on for its own check
    # that refuses to join a cluster, and keeps 127.0.0.1 as given (_WORKER_START).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = LocalCluster(f"127.0.0.1:{port}", temp_dir, env)
    head = [_ray_bin(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--temp-dir", str(temp_dir), "--num-cpus", str(head_cpus), "--num-gpus", "0",
            "--include-dashboard", "false", "--dashboard-host", "127.0.0.1",
            "--object-store-memory", str(200 << 20), "--block"]
    cluster.nodes.append(Node("head", _spawn(head, env, temp_dir / "head.log"), head_cpus, head,
                              temp_dir / "head.log"))
    try:
        cluster.wait_for_nodes(1, timeout_s)
        for cpus in worker_cpus:
            cluster.add_worker(cpus)
        cluster.wait_for_nodes(1 + len(worker_cpus), timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
