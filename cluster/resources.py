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

The facts it plans with come from cluster/cluster_view.py; what the actors do with the plan
(claim a device, record where they ran) is in cluster/placement.py.

No job module is imported here; Ray and torch are imported only inside functions.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass

from cluster.cluster_view import ClusterView, cluster_view, format_resources
from cluster.errors import UserError
from cluster.placement import new_placement_book

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
ACTOR_MEMORY = 2 << 30  # bytes of RAM reserved per model actor (Inception-v3 on CPU peaks near 0.9 GiB)
CPU_BLOCKS_IN_FLIGHT = 2  # blocks queued per CPU model actor (ActorPlan.compute)


class ResourceError(UserError):
    """The job asks for resources the cluster cannot give, or the options are invalid."""


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
    asked = f"{count} {what}(s) x {format_resources(bundle)}"
    if not view.fits_one_node(bundle):
        raise ResourceError(f"{asked}: no node can hold one {what}; {view.describe()}")
    for resource, amount in bundle.items():
        needed = count * amount + (reserve_cpus if resource == "CPU" else 0.0)
        if needed > view.capacity(resource):
            extra = f" (+{reserve_cpus:g} CPU for the other stages)" if resource == "CPU" and reserve_cpus else ""
            raise ResourceError(f"{asked}{extra} needs {needed:g} {resource}; {view.describe()}")


# ---------------------------------------------------------------- on the actors




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
