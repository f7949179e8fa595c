"""Ray Train's torch process group, kept on 127.0.0.1 when the Ray node is on the loopback address.

Ray 2.60's TorchTrainer (ray.train.torch.config._TorchBackend.on_start) takes the
rendezvous address from worker 0's node IP (`ray.util.get_node_ip_address()`: 127.0.0.1
for the local Ray that cluster.ray_runtime.init_ray starts) and a free port, sets
MASTER_ADDR / MASTER_PORT and calls `torch.distributed.init_process_group("env://")`.
Rank 0 then starts torch's rendezvous server (TCPStore), which listens on every
interface ("::") whatever MASTER_ADDR says: the machine's network address would reach it.

`LoopbackTorchConfig` (a TorchConfig) does the same set-up, except that when worker 0's
node IP is a loopback address, worker 0 first opens the rendezvous socket on that address
and starts a multi-tenant TCPStore server on it (`master_listen_fd`); torch's own
rendezvous (`multi_tenant=True`, same port) then reuses that server instead of opening
one on all interfaces.  Gloo's and NCCL's own sockets are pinned to the loopback
interface the same way (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME).  On a real cluster
(a node IP that is not loopback) it is Ray's set-up, unchanged.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import (V1WorkerGroup, _set_torch_distributed_env_vars,
                                    _setup_torch_process_group, _TorchBackend)

# Worker 0's rendezvous server, held for the life of the worker process: torch's
# multi-tenant cache keeps only a weak reference to it.
_HELD: list = []


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def loopback_interface() -> str | None:
    """The name of the network interface that holds 127.0.0.1 (lo on Linux, lo0 on macOS)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return None


def _pin_to_loopback(addr: str, port: int) -> None:
    """On every worker: the rendezvous address and the collective libraries' interface."""
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)
    interface = loopback_interface()
    if interface:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
        os.environ["NCCL_SOCKET_IFNAME"] = interface


def _open_loopback_store(timeout_s: int) -> tuple[str, int] | None:
    """On worker 0: when its node IP is loopback, a rendezvous server listening on that
    address only; returns (address, port), or None (not loopback: Ray's own set-up)."""
    import torch.distributed as dist

    addr = ray.util.get_node_ip_address()
    if not is_loopback(addr):
        return None
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((addr, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = dist.TCPStore(addr, port, None, True, timedelta(seconds=timeout_s),
                          wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.detach())
    _HELD[:] = [store]
    return addr, port


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        backend = backend_config.backend
        if backend is None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            tpus = worker_group.get_resources_per_worker().get("TPU", 0)
            backend = "nccl" if gpus > 0 else None if tpus > 0 else "gloo"
        if backend not in ("gloo", "nccl") or backend_config.init_method != "env":
            return super().on_start(worker_group, backend_config)
        opened = worker_group.execute_single(0, _open_loopback_store, timeout_s=backend_config.timeout_s)
        if opened is None:
            return super().on_start(worker_group, backend_config)
        addr, port = opened
        worker_group.execute(_pin_to_loopback, addr=addr, port=port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(
            i, _setup_torch_process_group, backend=backend, world_rank=i,
            world_size=len(worker_group), init_method="env://", timeout_s=backend_config.timeout_s)
            for i in range(len(worker_group))])


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """TorchConfig whose process group stays on 127.0.0.1 on a loopback Ray node (see above)."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
