"""Telling the user when a Ray node is lost while a job runs.

Ray recovers from a lost node by itself: Ray Data re-runs the lost node's tasks (and, through
lineage, the blocks that lived in its object store) and restarts its actors on the nodes left
(actors restart without limit, their calls are retried); Ray Train restarts its worker group
from the newest checkpoint (train's `--max-failures`).  What Ray does not do is say so on the
console: a job that slowed down for a minute looks the same as one that lost a machine.
`watching_nodes()` polls the cluster's node table in a thread while the job runs and logs one
line per lost node, when it is lost, and the job's summary records the list.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

log = logging.getLogger(__name__)

POLL_S = 1.0


class NodeWatch:
    """The nodes that went from alive to dead since the watch began."""

    def __init__(self, job: str):
        self.job = job
        self.lost: list[dict] = []
        self._known = self._alive()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cycledrums-node-watch", daemon=True)

    @staticmethod
    def _alive() -> dict[str, str]:
        import ray

        if not ray.is_initialized():  # nothing to watch (a job that runs without Ray, or has not started it)
            return {}
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}

    def check(self) -> None:
        """Compare the node table with the last look; log each node lost since."""
        alive = self._alive()
        for node_id, address in self._known.items():
            if node_id not in alive:
                self.lost.append({"node_id": node_id, "address": address})
                log.warning("%s: Ray node %s (%s) was lost mid-job; Ray re-runs the tasks it held and "
                            "restarts its actors on the nodes left, and the job goes on", self.job,
                            node_id[:12], address)
        self._known = alive

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.check()
            except Exception as err:  # the GCS may be busy; the next look will tell
                log.debug("node watch: %s", err)

    def start(self) -> "NodeWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.check()
        except Exception as err:
            log.debug("node watch: %s", err)

    def summary(self) -> list[dict]:
        return list(self.lost)


@contextmanager
def watching_nodes(job: str):
    """Watch Ray's nodes while the block runs (Ray must be initialised); yields the NodeWatch."""
    watch = NodeWatch(job).start()
    try:
        yield watch
    finally:
        watch.stop()
        if watch.lost:
            log.warning("%s: %d node(s) lost during the job; their work was retried on the nodes left",
                        job, len(watch.lost))
