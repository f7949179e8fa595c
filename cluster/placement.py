"""On the actors and workers: which device they claim, and the book of where they ran.

On the actors (`claim_device`): an actor planned for cuda that sees no CUDA device
stops the job with `NoCudaError`, naming the node and CUDA_VISIBLE_DEVICES, unless
the test-only switch CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU=1 lets it run on CPU as a
stand-in (Ray's fake cluster has GPUs as scheduling tokens but no CUDA).  Every
actor records where it ran (node id, GPU ids) in a `PlacementBook` the job's summary
reads at the end; the book's actor ends with the job, finished or failed
(`ending_placement_books`).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cluster.cluster_view import head_node_id

if TYPE_CHECKING:
    from cluster.resources import ActorPlan

log = logging.getLogger(__name__)

STANDIN_ENV = "CYCLEDRUMS_TEST_CPU_STANDIN_FOR_GPU"


class NoCudaError(RuntimeError):
    """A model actor that Ray gave a GPU sees no CUDA device."""


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
