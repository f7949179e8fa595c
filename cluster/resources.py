"""One resource policy for every Ray job (prepare, train, generate, score).

It decides, on the driver, before any work starts:
- the device: `--device cuda|cpu`, or `auto` = cuda when the cluster has GPUs now OR
  its autoscaler has a node type with GPUs (so a cluster whose GPU nodes scale from
  zero still gets GPU jobs: the model actors ask for GPUs and the autoscaler launches
  the nodes);
- the model actor pool: `--actors MIN[:MAX]` (an autoscaling `ActorPoolStrategy`),
  `--gpus-per-actor` (fractions pack several small models on one GPU); CPU actors
  reserve several CPUs and use them as torch threads;
- whether the request can ever be satisfied: a request no node (present or
  launchable) can hold fails at once, saying what the cluster has and what its
  node types can add, instead of waiting forever.

Where the autoscaler's node types come from (`autoscaler_node_types`):
1. the GCS's cluster config (`ray._private.state.state.get_cluster_config()`, the
   `node_group_configs` that Ray Data's own autoscaling reads; autoscaler v2 /
   KubeRay report it);
2. else, for the v1 autoscaler (the cluster launcher, `ray up cluster/aws.yaml`, and
   Ray's fake cluster), the YAML its monitor process was started with
   (`--autoscaling-config`), read by a zero-CPU task pinned to the head node; the
   monitor's pid is in the autoscaler status Ray keeps in the GCS.
With neither (a fixed cluster, a local Ray) only the nodes present count.

On the actors (`claim_device`): an actor planned for cuda that sees no CUDA device
stops the job with `NoCudaError`, naming the node and CUDA_VISIBLE_DEVICES, unless
the test-only switch CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU=1 lets it run on CPU as a
stand-in (Ray's fake cluster has GPUs as scheduling tokens but no CUDA).  Every
actor records where it ran (node id, GPU ids) in a `PlacementBook` the job's summary
reads at the end; the book's actor ends with the job, finished or failed
(`ending_placement_books`).

No job module is imported here; Ray and torch are imported only inside functions.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from cluster.errors import UserError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
STANDIN_ENV = "CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU"
ACTOR_MEMORY = 2 << 30  # bytes of RAM reserved per model actor (Inception-v3 on CPU peaks near 0.9 GiB)
UNLIMITED = -1
# A custom resource the local Ray declares with the machine's core count (nothing asks
# for it): its logical CPUs are tokens, more than its cores (cluster/ray_runtime.py).
NODE_CORES = "node_cores"
CPU_BLOCKS_IN_FLIGHT = 2  # blocks queued per CPU model actor (ActorPlan.compute)


class ResourceError(UserError):
    """The job asks for resources the cluster cannot give, or the options are invalid."""


class NoCudaError(RuntimeError):
    """A model actor that Ray gave a GPU sees no CUDA device."""


# ---------------------------------------------------------------- options


def parse_actors(text: str) -> tuple[int, int]:
    """'N' -> (N, N); 'MIN:MAX' -> (MIN, MAX); argparse type."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]


def parse_gpus_per_actor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value <= 1 or (value > 1 and value.is_integer())):
        raise argparse.ArgumentTypeError(
            f"expected a fraction in (0, 1] or a whole number of GPUs, got {text!r}")
    return value


def add_device_option(parser) -> None:
    parser.add_argument(
        "--device", choices=DEVICES, default="auto",
        help="where the models run: cuda, cpu, or auto = cuda when the cluster has GPUs or its "
        "autoscaler has a node type with GPUs (see cluster/README.md), else cpu (default: auto)")


def add_resource_options(parser, what: str = "model",
                         cpu_default: str = "one per CPU in half the cluster's CPUs minus one") -> None:
    """--device, --actors, --gpus-per-actor: the same three options on every Ray Data job."""
    add_device_option(parser)
    parser.add_argument(
        "--actors", type=parse_actors, default=None, metavar="MIN[:MAX]",
        help=f"{what} actors: a fixed number or an autoscaling range (default: on cuda 1 up to "
        f"what the cluster's GPUs and GPU node types allow; on cpu {cpu_default})")
    parser.add_argument(
        "--gpus-per-actor", type=parse_gpus_per_actor, default=1.0, metavar="G",
        help="GPUs each of these actors reserves with --device cuda; a fraction such as 0.5 packs "
        "several actors on one GPU (default: 1)")


@dataclass(frozen=True)
class ResourceRequest:
    """What the user asked for (from the options above)."""

    device: str = "auto"
    actors: tuple[int, int] | None = None
    gpus_per_actor: float = 1.0

    @classmethod
    def from_args(cls, args) -> "ResourceRequest":
        return cls(device=getattr(args, "device", "auto") or "auto",
                   actors=getattr(args, "actors", None),
                   gpus_per_actor=getattr(args, "gpus_per_actor", 1.0) or 1.0)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ResourceError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.actors is not None:
            lo, hi = self.actors
            if lo < 1 or hi < lo:
                raise ResourceError(f"--actors must be N or MIN:MAX with 1 <= MIN <= MAX, got {lo}:{hi}")
        g = self.gpus_per_actor
        if not (0 < g <= 1 or (g > 1 and float(g).is_integer())):
            raise ResourceError(f"--gpus-per-actor must be in (0, 1] or a whole number, got {g}")


# ---------------------------------------------------------------- what the cluster has / can add


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
            f"{t.name}: {_fmt(t.resources)} x up to "
            f"{'unlimited' if t.max_nodes == UNLIMITED else t.max_nodes} node(s)"
            for t in self.node_types)
        return f"the cluster has {now}; its autoscaler can add: {types}"


def _fmt(resources: dict) -> str:
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


# ---------------------------------------------------------------- the plan


def choose_device(requested: str, view: ClusterView) -> tuple[str, str]:
    """(device, why): see the module docstring for the rule."""
    gpus = view.now("GPU")
    gpu_types = [t.name for t in view.node_types if t.resources.get("GPU", 0) > 0 and t.max_nodes != 0]
    if requested == "cpu":
        return "cpu", "--device cpu"
    if gpus:
        return "cuda", f"the cluster has {gpus:g} GPU(s)"
    if gpu_types:
        return "cuda", f"the autoscaler can add GPU nodes ({', '.join(gpu_types)})"
    if requested == "cuda":
        raise ResourceError(f"--device cuda: no GPU now and no node type that can add one; {view.describe()}")
    return "cpu", "no GPU in the cluster and no autoscaler node type with GPUs"


@dataclass(frozen=True)
class IOTasks:
    """What each of a job's light decode / write tasks reserves, and how many run at once
    (None: as many as Ray Data's budget allows)."""

    num_cpus: float = 1.0
    max_tasks: int | None = None

    def map_args(self) -> dict:
        """map_batches arguments of such a stage."""
        import ray.data

        args = {"num_cpus": self.num_cpus}
        if self.max_tasks:
            args["compute"] = ray.data.TaskPoolStrategy(size=self.max_tasks)
        return args


@dataclass(frozen=True)
class ActorPlan:
    """Where and how many model actors run, and what each reserves."""

    device: str
    min_size: int
    max_size: int
    num_gpus: float
    num_cpus: float
    reason: str = ""
    memory: int = ACTOR_MEMORY
    io: IOTasks = IOTasks()  # the job's other (decode, write) tasks

    @property
    def io_task_cpus(self) -> float:
        return self.io.num_cpus

    @property
    def size(self) -> int:
        return self.max_size

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.num_cpus))

    def compute(self):
        import ray.data

        # Two blocks in flight per CPU actor: the next block waits in the actor's queue, so the
        # actor never idles between blocks for the scheduler's round trip (score, 192 clips:
        # 1.29x the one-thread loop with one in flight, 1.70x with two).  Not more: a small
        # job's blocks would all queue on the first actor that is ready while the others
        # still start (Ray Data's default did that: the demo's 4 clips ran on one of its 2
        # actors, 58 s instead of about 30); with two, that actor is at most one block ahead.
        queue = {"max_tasks_in_flight_per_actor": CPU_BLOCKS_IN_FLIGHT} if self.device == "cpu" else {}
        if self.min_size == self.max_size:
            return ray.data.ActorPoolStrategy(size=self.min_size, **queue)
        return ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size, **queue)

    def remote_args(self) -> dict:
        # The memory reservation also keeps Ray Data from fusing the CPU stage before the
        # model stage into the model actors (it fuses maps with identical resources), so
        # decoding runs in its own tasks and never holds up the model.
        args = {"num_cpus": self.num_cpus}
        if self.memory:
            args["memory"] = self.memory
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        return args

    def describe(self) -> str:
        size = str(self.min_size) if self.min_size == self.max_size else f"{self.min_size}-{self.max_size}"
        each = f"{self.num_gpus:g} GPU + {self.num_cpus:g} CPU" if self.num_gpus else \
            f"{self.num_cpus:g} CPU ({self.torch_threads} torch threads)"
        return f"{size} actor(s) on {self.device}, each {each} ({self.reason})"

    def summary(self) -> dict:
        out = asdict(self)
        out["torch_threads"] = self.torch_threads
        return out


def plan_actors(request: ResourceRequest, view: ClusterView, *, what: str = "model",
                cpu_share: float = 0.5, reserve_cpus: float = 1.0,
                default_cpu_actors: int | None = None, memory: int = ACTOR_MEMORY,
                cpu_limit: float | None = None, io_cpus: float | None = None) -> ActorPlan:
    """The model actor pool of a Ray Data job.

    cuda: each actor holds `gpus_per_actor` GPUs and 1 CPU; default pool 1..(GPUs the
    cluster has or can add) / gpus_per_actor, so the autoscaler adds GPU nodes as the
    pool grows.  cpu: the actors share `cpu_share` of the largest CPU count (what the
    cluster has, or one launchable node has) minus `reserve_cpus` for the job's CPU
    stages; `default_cpu_actors` of them (None: one per CPU), each using its CPUs as
    torch threads.  `cpu_limit` (a job's --num-cpus) caps the CPUs the job may use.

    `io_cpus` (cpu only) is for jobs whose actors do all of a clip's heavy work (model and
    inversion): the actors then take every CPU but `io_cpus`, one actor per core with one
    torch thread each (one thread per process scales best for these small convolutions,
    benchmarks/bench_generate.py), and the job's light decode / write tasks share
    `io_cpus`, two at a time.
    """
    if io_cpus is not None and choose_device(request.device, view)[0] == "cpu":
        return _plan_fused_cpu_actors(request, view, what, io_cpus, memory, cpu_limit)
    device, why = choose_device(request.device, view)
    if not view.node_types_declare_memory():
        memory = 0
    if device == "cuda":
        g = request.gpus_per_actor
        capacity = view.capacity("GPU")
        most = int(capacity // g) if math.isfinite(capacity) else max(1, int(view.now("GPU") // g))
        lo, hi = request.actors or (1, max(1, most))
        plan = ActorPlan("cuda", lo, hi, g, 1.0, why, memory)
    else:
        cpus = max(view.now("CPU"), view.largest_node("CPU"))
        if cpu_limit:
            cpus = min(cpus, cpu_limit)
        budget = max(1, int(cpus * cpu_share - reserve_cpus))
        if request.actors:
            lo, hi = request.actors
        else:
            lo = hi = default_cpu_actors or budget
        plan = ActorPlan("cpu", lo, hi, 0, float(max(1, budget // hi)), why, memory)
    check_satisfiable({"CPU": plan.num_cpus, "GPU": plan.num_gpus}, plan.min_size, view,
                      what=f"{what} actor", reserve_cpus=reserve_cpus)
    needed = plan.min_size * plan.num_cpus + reserve_cpus
    if cpu_limit and needed > cpu_limit:
        raise ResourceError(f"{plan.min_size} {what} actor(s) x {plan.num_cpus:g} CPU (+{reserve_cpus:g} CPU "
                            f"for the other stages) need {needed:g} CPUs; the job is capped at {cpu_limit:g}")
    return plan


def _plan_fused_cpu_actors(request: ResourceRequest, view: ClusterView, what: str, io_cpus: float,
                           memory: int, cpu_limit: float | None) -> ActorPlan:
    _, why = choose_device(request.device, view)
    cpus = view.cores()
    if cpu_limit:
        cpus = min(cpus, cpu_limit)
    spare = max(1.0, cpus - io_cpus)
    lo, hi = request.actors or (math.ceil(spare),) * 2
    # Logical CPUs are scheduling tokens: 2 cores give 2 actors x 0.75 + 2 I/O tasks x 0.25.
    # The I/O tasks are capped at 2 at once, not only by tokens: the local Ray's spare tokens
    # would let Ray Data start six or more, and each new task process imports torch while
    # the actors start (measured: score's actors waited 18 s for their processes).  On CPU
    # the jobs now decode audio in their actors; these tasks only read Parquet sets.
    each = math.floor(1000 * spare / hi) / 1000
    plan = ActorPlan("cpu", lo, hi, 0, each, why, memory, io=IOTasks(io_cpus / 2, 2))
    check_satisfiable({"CPU": each}, lo, view, what=f"{what} actor", reserve_cpus=io_cpus)
    return plan


def check_satisfiable(bundle: dict, count: int, view: ClusterView, *, what: str,
                      reserve_cpus: float = 0.0) -> None:
    """Raise ResourceError when `count` x `bundle` (+ reserve_cpus for other stages) can never run."""
    bundle = {k: v for k, v in bundle.items() if v}
    asked = f"{count} {what}(s) x {_fmt(bundle)}"
    if not view.fits_one_node(bundle):
        raise ResourceError(f"{asked}: no node can hold one {what}; {view.describe()}")
    for resource, amount in bundle.items():
        needed = count * amount + (reserve_cpus if resource == "CPU" else 0.0)
        if needed > view.capacity(resource):
            extra = f" (+{reserve_cpus:g} CPU for the other stages)" if resource == "CPU" and reserve_cpus else ""
            raise ResourceError(f"{asked}{extra} needs {needed:g} {resource}; {view.describe()}")


# ---------------------------------------------------------------- on the actors


class PlacementBook:
    """A zero-CPU Ray actor the model actors report to: which node, which GPUs, which device."""

    def __init__(self):
        self.entries = []

    def record(self, entry: dict) -> None:
        self.entries.append(entry)

    def read(self) -> list[dict]:
        return list(self.entries)


def new_placement_book():
    """The book lives on the head node (soft: anywhere if it cannot), the node a cluster does not
    lose without losing the job, so a lost worker node does not take the book along."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    book = ray.remote(num_cpus=0)(PlacementBook)
    head = head_node_id()
    if head:
        book = book.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=True))
    return book.remote()


def read_placements(book) -> list[dict]:
    """The placements a job's actors recorded in its book (none without a book, or when the
    book is gone with its node: the record is for the summary, never a reason to fail the job)."""
    import ray

    if book is None:
        return []
    try:
        return ray.get(book.read.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:  # ActorUnavailableError too
        log.warning("the record of where the actors ran was lost (%s); the summary lists no placements",
                    type(err).__name__)
        return []


@contextmanager
def ending_placement_books(*books):
    """The life of a job's placement books: each ends (its actor is killed) when the job
    leaves the block, finished or failed.  Read them inside the block.

    Ray Data keeps a pool's constructor arguments (the book's handle among them) after the
    job, so a book would otherwise outlive it: one idle actor per job in a long-lived
    driver (a notebook, a benchmark, the test session)."""
    import ray

    try:
        yield
    finally:
        for book in {id(b): b for b in books if b is not None}.values():
            try:
                ray.kill(book)
            except Exception as err:  # the job's own error, if any, is the one to raise
                log.debug("placement book not ended: %s", err)


def placement_summary(plan: ActorPlan, entries: list[dict]) -> dict:
    """What a job's summary records: device, pool, and where each actor ran."""
    return {"device": plan.device, "actors": plan.summary(),
            "nodes": sorted({e["node_id"] for e in entries}),
            "gpu_ids": sorted({g for e in entries for g in e["gpu_ids"]}),
            "cpu_standin": any(e["cpu_standin"] for e in entries),
            "placements": entries}


def claim_device(planned: str, what: str, book=None, torch_threads: int = 1) -> str:
    """In a model actor: the torch device to use; records the placement in `book`.

    cuda without CUDA raises NoCudaError (or, with CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU=1,
    runs on CPU as a stand-in); cpu actors get `torch_threads` intra-op threads.
    """
    import ray
    import torch

    in_ray = ray.is_initialized()  # False when a test calls the actor class directly
    node_id = ray.get_runtime_context().get_node_id() if in_ray else None
    gpu_ids = [str(g) for g in ray.get_gpu_ids()] if in_ray else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    device, standin = planned, False
    if planned == "cuda" and not torch.cuda.is_available():
        if os.environ.get(STANDIN_ENV) != "1":
            raise NoCudaError(
                f"{what} actor on node {node_id} was given GPU(s) {gpu_ids or 'none'} by Ray "
                f"(CUDA_VISIBLE_DEVICES={visible!r}) but torch sees no CUDA device: the node's "
                "image, driver or torch build is broken; fix the node or run with --device cpu")
        device, standin = "cpu", True
        log.warning("%s actor: no CUDA on node %s, running on CPU as a test stand-in (%s=1)",
                    what, node_id, STANDIN_ENV)
    if device == "cpu":
        torch.set_num_threads(max(1, int(torch_threads)))
    entry = {"what": what, "node_id": node_id, "node_ip": ray.util.get_node_ip_address() if in_ray else None,
             "gpu_ids": gpu_ids, "cuda_visible_devices": visible, "planned_device": planned,
             "device": device, "cpu_standin": standin, "torch_threads": torch.get_num_threads(),
             "pid": os.getpid()}
    if book is not None:
        try:
            ray.get(book.record.remote(entry), timeout=60)
        except ray.exceptions.RayActorError as err:  # ActorUnavailableError is one
            # The book went with a lost node: the actor still works; the summary misses its entry.
            log.warning("%s actor: placement not recorded (%s)", what, type(err).__name__)
    return device


@contextmanager
def broken_gpu_node_as(error_type: type[Exception]):
    """Around a job's collection on the driver: an actor's NoCudaError (a broken GPU node)
    becomes `error_type` with NoCudaError's one-line text, not Ray's 300-line actor
    traceback; any other error passes unchanged."""
    try:
        yield
    except Exception as err:
        message = _no_cuda_message(err)
        if message:
            raise error_type(message) from err
        raise


def _no_cuda_message(err: BaseException) -> str | None:
    """The NoCudaError text inside an error Ray raised on the driver (actor died), if any."""
    text = str(err)
    marker = "NoCudaError: "
    if marker not in text:
        return None
    return text.split(marker, 1)[1].strip().splitlines()[0]


def plan_model_stage(request: ResourceRequest, *, what: str, **policy) -> tuple[ActorPlan, object]:
    """On the driver: (the plan of a job's model actors, a placement book they report to)."""
    plan = plan_actors(request, cluster_view(), what=what, **policy)
    log.info("%s: %s", what, plan.describe())
    return plan, new_placement_book()


def plan_workers(requested_device: str, num_workers: int, cpus_per_worker: float,
                 what: str = "training worker", view: ClusterView | None = None) -> tuple[str, object]:
    """On the driver of a Ray Train job: (device, placement book); ResourceError when the
    worker group can never be scheduled (it would otherwise wait forever).  With `view`
    (the local Ray before it starts) only the check runs: the book is None."""
    if view is not None:
        device, _ = choose_device(requested_device, view)
        check_satisfiable({"CPU": cpus_per_worker, "GPU": 1.0 if device == "cuda" else 0.0},
                          num_workers, view, what=what)
        return device, None
    view = cluster_view()
    device, why = choose_device(requested_device, view)
    bundle = {"CPU": cpus_per_worker, "GPU": 1.0 if device == "cuda" else 0.0}
    check_satisfiable(bundle, num_workers, view, what=what)
    log.info("%d %s(s) on %s (%s)", num_workers, what, device, why)
    return device, new_placement_book()


def claim_train_device(device, what: str = "training worker", book=None, torch_threads: int = 1):
    """In a Ray Train worker: `device` (Ray Train's torch device) after the same checks as
    claim_device; the CPU when the test-only stand-in replaces a GPU."""
    import torch

    used = claim_device(device.type, what, book, torch_threads)
    return device if used == device.type else torch.device(used)


def train_backend(device: str) -> str | None:
    """The torch.distributed backend Ray Train should use: gloo for a CPU stand-in of a GPU
    (NCCL needs CUDA); None = Ray Train's default."""
    return "gloo" if device == "cuda" and os.environ.get(STANDIN_ENV) == "1" else None
