"""What a Ray cluster has now and what its autoscaler can add: the facts the resource
policy (cluster/resources.py) plans with.

Where the autoscaler's node types come from (`autoscaler_node_types`):
1. the GCS's cluster config (`ray._private.state.state.get_cluster_config()`, the
   `node_group_configs` that Ray Data's own autoscaling reads; autoscaler v2 /
   KubeRay report it);
2. else, for the v1 autoscaler (the cluster launcher, `ray up cluster/aws.yaml`, and
   Ray's fake cluster), the YAML its monitor process was started with
   (`--autoscaling-config`), read by a zero-CPU task pinned to the head node; the
   monitor's pid is in the autoscaler status Ray keeps in the GCS.
With neither (a fixed cluster, a local Ray) only the nodes present count.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNLIMITED = -1  # NodeType.max_nodes: the autoscaler may add any number
# A custom resource the local Ray declares with the machine's core count (nothing asks
# for it): its logical CPUs are tokens, more than its cores (cluster/ray_runtime.py).
NODE_CORES = "node_cores"


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node type: its resources per node and how many nodes it may add."""

    name: str
    resources: dict
    max_nodes: int  # UNLIMITED = no limit


@dataclass
class ClusterView:
    nodes: list[dict]  # total resources of each alive node
    node_types: list[NodeType] = field(default_factory=list)
    node_types_source: str = "none"

    def now(self, resource: str) -> float:
        return sum(n.get(resource, 0.0) for n in self.nodes)

    def can_add(self, resource: str) -> bool:
        return any(t.resources.get(resource, 0) > 0 and t.max_nodes != 0 for t in self.node_types)

    def largest_node(self, resource: str) -> float:
        """The most of `resource` one node has or one launchable node would have."""
        values = [n.get(resource, 0.0) for n in self.nodes]
        values += [t.resources.get(resource, 0.0) for t in self.node_types if t.max_nodes != 0]
        return max(values, default=0.0)

    def cores(self) -> float:
        """CPU cores to run busy processes on: the CPUs the cluster has now (or one launchable
        node has), counting a node that declares NODE_CORES (the local Ray, which advertises
        more logical CPUs than its cores) by its cores."""
        now = sum(min(n.get("CPU", 0.0), n.get(NODE_CORES, math.inf)) for n in self.nodes)
        return max(now, max((t.resources.get("CPU", 0.0) for t in self.node_types if t.max_nodes != 0), default=0.0))

    def capacity(self, resource: str) -> float:
        """All of `resource` the cluster has now plus what its autoscaler may add (inf: no limit)."""
        total = self.now(resource)
        for t in self.node_types:
            per_node = t.resources.get(resource, 0.0)
            if per_node and t.max_nodes == UNLIMITED:
                return math.inf
            total += per_node * max(0, t.max_nodes)
        return total

    def fits_one_node(self, bundle: dict) -> bool:
        def fits(resources: dict) -> bool:
            return all(resources.get(k, 0.0) >= v for k, v in bundle.items() if v)

        return any(fits(n) for n in self.nodes) or \
            any(fits(t.resources) for t in self.node_types if t.max_nodes != 0)

    def node_types_declare_memory(self) -> bool:
        """False when a launchable node type gives no `memory`: the v1 autoscaler then finds
        any memory reservation infeasible (Ray's cloud providers fill it in; others may not)."""
        return all(t.resources.get("memory") for t in self.node_types if t.max_nodes != 0)

    def describe(self) -> str:
        now = f"{self.now('CPU'):g} CPUs and {self.now('GPU'):g} GPUs on {len(self.nodes)} node(s)"
        if not self.node_types:
            return f"the cluster has {now} and no autoscaler node types"
        types = "; ".join(
            f"{t.name}: {format_resources(t.resources)} x up to "
            f"{'unlimited' if t.max_nodes == UNLIMITED else t.max_nodes} node(s)"
            for t in self.node_types)
        return f"the cluster has {now}; its autoscaler can add: {types}"


def format_resources(resources: dict) -> str:
    return ", ".join(f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if k in resources) or "no CPU/GPU"


def cluster_view() -> ClusterView:
    """The alive nodes and the autoscaler's node types (Ray must be initialised)."""
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    types, source = autoscaler_node_types()
    return ClusterView(nodes, types, source)


def autoscaler_node_types() -> tuple[list[NodeType], str]:
    """(node types the autoscaler can launch, where they were read); ([], "none") without one."""
    types = _node_types_from_gcs()
    if types:
        return types, "GCS cluster config"
    try:
        types = _node_types_from_monitor_config()
    except Exception as err:  # no autoscaler, or one we cannot read: count present nodes only
        log.debug("no autoscaler config readable: %s", err)
        types = []
    return (types, "autoscaler config on the head node") if types else ([], "none")


def _node_types_from_gcs() -> list[NodeType]:
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception as err:
        log.debug("no cluster config in the GCS: %s", err)
        return []
    if not config:
        return []
    return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()},
                     UNLIMITED if g.max_count == -1 else int(g.max_count))
            for g in config.node_group_configs]


def _node_types_from_monitor_config() -> list[NodeType]:
    import json

    import ray
    from ray.experimental.internal_kv import _internal_kv_get
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    status = _internal_kv_get("__autoscaling_status")
    if not status:
        return []
    monitor_pid = json.loads(status).get("monitor_pid")
    head = head_node_id()
    if not monitor_pid or not head:
        return []
    read = ray.remote(num_cpus=0, max_retries=0)(_read_monitor_node_types).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
    raw = ray.get(read.remote(int(monitor_pid)), timeout=30)
    return [NodeType(name, dict(res), int(n)) for name, res, n in raw]


def head_node_id() -> str | None:
    """The id of the cluster's live head node (None if Ray lists none)."""
    import ray

    head = [n["NodeID"] for n in ray.nodes()
            if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})]
    return head[0] if head else None


def _read_monitor_node_types(monitor_pid: int) -> list[tuple]:
    """On the head: the worker node types of the YAML the monitor was started with."""
    import yaml

    with open(f"/proc/{monitor_pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    path = None
    for i, arg in enumerate(argv):
        if arg.startswith("--autoscaling-config="):
            path = arg.split("=", 1)[1]
        elif arg == "--autoscaling-config" and i + 1 < len(argv):
            path = argv[i + 1]
    if not path:
        return []
    with open(os.path.expanduser(path)) as f:
        config = yaml.safe_load(f)
    head_type = config.get("head_node_type")
    out = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head_type:
            continue
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        out.append((name, resources, int(spec.get("max_workers", config.get("max_workers", 0)))))
    return out
