"""Several server processes on one port, with connections spread evenly among them.

uvicorn's own `--workers` shares one listening socket among its processes, and the kernel hands a new
connection to whichever process is waiting in accept() first: under keep-alive load one worker took
nearly every connection (benchmarks/serve_load.py, 2 workers: 98% and 5% of a core), so a second
worker added nothing. Here each worker binds its own socket with SO_REUSEPORT instead, and the kernel
spreads new connections across the workers' sockets by a hash of the client's address and port (how
nginx's `reuse_port` and gunicorn's `--reuse-port` balance). Linux only: elsewhere SO_REUSEPORT does
not balance, and `recforge serve` falls back to uvicorn's workers.

The parent process only supervises: it reserves the port first (so a taken port fails before any
model loads), starts the workers, replaces one that dies, stops them all on SIGTERM/SIGINT, and gives
up when a worker dies during its start-up (a model that cannot load would otherwise restart forever).
Workers die with the parent, even when it is killed outright (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

START_UP_SECONDS = 30.0  # a worker that dies sooner than this after its start failed to start: give up


def balanced_workers_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def run_workers(
    workers: int, host: str, port: int, options: dict[str, Any], on_ready: Callable[[int], None] | None = None
) -> int:
    """Serve `recforge.serving.app.app_from_environment` from `workers` processes on host:port until
    SIGTERM/SIGINT; returns the exit status (0 on a requested stop, 1 when a worker could not start).
    `on_ready` is called with the port once it is reserved (the one the system chose for port 0)."""
    reservation = _reuse_port_socket(host, port)  # bound, never listening: takes no connections
    port = reservation.getsockname()[1]
    if on_ready is not None:
        on_ready(port)
    context = multiprocessing.get_context("spawn")  # a clean interpreter per worker, as uvicorn's
    stopping = False

    def start() -> Any:
        process = context.Process(target=_serve_one, args=(host, port, options, os.getpid()), daemon=False)
        process.start()
        process.started_at = time.monotonic()  # type: ignore[attr-defined]
        return process

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    processes = [start() for _ in range(workers)]
    status = 0
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in processes], timeout=0.5)
            for n, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                if time.monotonic() - process.started_at < START_UP_SECONDS:
                    logger.error("worker %d failed to start (status %s); stopping", process.pid, process.exitcode)
                    stopping, status = True, 1
                    break
                logger.warning("worker %d exited (status %s); starting another", process.pid, process.exitcode)
                processes[n] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # uvicorn finishes the requests in flight, then exits
        deadline = time.monotonic() + 30
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        reservation.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def _serve_one(host: str, port: int, options: dict[str, Any], parent: int) -> None:
    """One worker: its own SO_REUSEPORT listening socket, the app, uvicorn."""
    _die_with_parent(parent)
    import uvicorn

    from recforge.serving.app import app_from_environment

    listener = _reuse_port_socket(host, port)
    listener.listen(2048)
    app = app_from_environment()
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options)).run(sockets=[listener])


def listening_socket(host: str, port: int) -> socket.socket:
    """A single server's listening socket, bound before the model loads (a taken port fails at once).
    SO_REUSEADDR only: a second server on the same port is refused rather than sharing it."""
    listener = _bound_socket(host, port, reuse_port=False)
    listener.listen(2048)
    return listener


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    listener = _bound_socket(host, port, reuse_port=True)
    listener.set_inheritable(True)
    return listener


def _bound_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
    except OSError:
        listener.close()
        raise
    return listener


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (it may be killed without a chance to stop us)."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
