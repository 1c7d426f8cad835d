"""Real servers for tests: `recforge serve` in a subprocess, a PostgreSQL server started from the Debian
package's binaries in a temporary directory (as the `postgres` user when the tests run as root), and
PgBouncer in front of it."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

TOKEN = "server-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`recforge serve` on a free port; `url` once it answers /health."""

    def __init__(self, artifact: Path, store: str, workers: int = 1, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "recforge.cli", "serve", "--model", str(artifact), "--port", str(self.port)]
        command += ["--store", store, "--workers", str(workers), *(extra or [])]
        env = {**os.environ, "RECFORGE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        """Until `n` worker processes have answered `/health` (`wait_ready` needs only one): the others may
        still be loading their model or reading the event store."""
        deadline, seen = time.time() + timeout, set()
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=self.url, timeout=2) as client:
                seen.add(client.get("/health").json()["worker"])  # a new connection: any worker may take it
            if len(seen) >= n:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{len(seen)} of {n} workers answered within {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing, as a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30, **options)


def postgres_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A throw-away PostgreSQL server on a free port (trust authentication, loopback) that a test can stop
    and start again on the same port and data directory, as a database restart or failover looks to a
    client."""

    def __init__(self, settings: str = "") -> None:
        """`settings`: extra server options ("-c max_connections=4")."""
        binaries = postgres_binaries()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="recforge-pg-"))  # under /tmp: reachable by the postgres user
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the package's postgres user
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres", "postgres")
        self.data, sockets = self.folder / "data", self.folder / "sockets"
        for path in (self.data, sockets):
            path.mkdir(exist_ok=True)
            if self.as_user:
                shutil.chown(path, "postgres", "postgres")
        self.port = free_port()
        self.options = f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=on {settings}".strip()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, binary: str, *args: str) -> None:
        command = [*self.as_user, str(self.binaries / binary), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", self.options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every connection and stops cleanly (a restart); `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def processes(self) -> list[int]:
        """The postmaster and its children (the backends serving each connection, the background workers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:  # the field after the state is the parent's pid
                    children.append(int(Path(stat).parent.name))
        return [postmaster, *children]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every process of the server stopped (SIGSTOP) for the block: the kernel still accepts connections
        and acknowledges data, nothing answers (a frozen host or process, a disk that stalls the server)."""
        stopped = self.processes()
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        command = [*self.as_user, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        subprocess.run(command, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(settings: str = "") -> Iterator[Postgres]:
    database = Postgres(settings)
    try:
        yield database
    finally:
        database.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server on a free port; yields its URL (trust authentication, loopback)."""
    with postgres_cluster() as database:
        yield database.url


def pgbouncer_binary() -> Path | None:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    return Path(found) if found else None


@contextlib.contextmanager
def pgbouncer(database: Postgres, pool_mode: str = "transaction", pool_size: int = 4) -> Iterator[str]:
    """PgBouncer (Debian's package) in front of `database` on a free port, pooling `pool_size` server
    connections in `pool_mode`; yields the URL clients use (database name `events`)."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed")
    folder = database.folder / "pgbouncer"
    folder.mkdir()
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    config = folder / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"events = host=127.0.0.1 port={database.port} dbname=postgres user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
        f"logfile = {folder / 'log'}\n"
    )
    if database.as_user:  # PgBouncer refuses to run as root, like PostgreSQL
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, "postgres", "postgres")
    said = folder / "stderr"  # a file, not a pipe nobody reads: a full pipe would stop PgBouncer mid-test
    with open(said, "wb") as stderr:
        process = subprocess.Popen([*database.as_user, str(binary), str(config)], stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {said.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield f"postgresql://postgres@127.0.0.1:{port}/events"
    finally:
        process.terminate()
        process.wait(timeout=30)


def outcome_within(call, give_up: float = 30.0) -> tuple[object, float]:
    """What `call()` returned or raised, and how long it took; fails instead of hanging past `give_up`."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # handed to the test
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(give_up)
    assert not thread.is_alive(), f"still waiting after {give_up} s"
    return outcome[0], time.monotonic() - started
