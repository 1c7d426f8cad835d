"""`recforge serve --workers N` on Linux: a SO_REUSEPORT socket per worker (serving/workers.py). Keep-alive
clients are spread over the workers (uvicorn's shared socket gave one worker nearly all of them), the
workers die with their supervisor even when it is killed outright, and a model that cannot load stops
the server with an error instead of restarting forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from recforge.models import create_model
from recforge.serving.workers import balanced_workers_supported
from tests.serving.servers import TOKEN, Server, free_port
from tests.serving.test_api import _artifact

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("servers"),
    pytest.mark.skipif(not balanced_workers_supported(), reason="SO_REUSEPORT balancing is Linux-only"),
]


@pytest.fixture(scope="module")
def ials_dir(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=8, n_iterations=2).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("workers") / "ials")


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _workers(pids: list[int]) -> list[int]:
    return [p for p in pids if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read().split()  # noqa: SIM115
    return stat[2] != "Z"


def test_keep_alive_connections_are_spread_over_the_workers(ials_dir, tmp_path):
    server = Server(ials_dir, f"sqlite:///{tmp_path / 'events.sqlite'}", workers=2)
    try:
        server.wait_workers(2)  # a worker still loading its model takes no connections yet
        clients = [server.client() for _ in range(16)]  # each keeps one connection open
        pids = [client.get("/health").json()["worker"] for client in clients]
        for _ in range(3):  # the same connection keeps its worker
            assert [client.get("/health").json()["worker"] for client in clients] == pids
        counts = sorted(pids.count(p) for p in set(pids))
        # a hash of the client port picks the socket: all 16 on one worker has probability 2 * 2**-16
        assert len(counts) == 2 and counts[0] >= 2, counts
        for client in clients:
            client.close()
    finally:
        server.stop()


def test_workers_die_with_their_supervisor_even_when_it_is_killed(ials_dir, tmp_path):
    server = Server(ials_dir, f"sqlite:///{tmp_path / 'events.sqlite'}", workers=2)
    children = _children(server.process.pid)  # the workers and multiprocessing's resource tracker
    assert len(_workers(children)) == 2
    server.kill()  # SIGKILL: the supervisor cannot stop them itself
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    assert not any(_alive(p) for p in children)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/health", timeout=2)


def test_a_model_that_cannot_load_stops_the_server_with_an_error(tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    command = [sys.executable, "-m", "recforge.cli", "serve", "--model", str(broken), "--port", str(free_port())]
    env = {**os.environ, "RECFORGE_TOKEN": TOKEN}
    done = subprocess.run([*command, "--workers", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "manifest" in done.stderr.lower() or "artifact" in done.stderr.lower(), done.stderr[-2000:]


def test_sigterm_stops_every_worker_gracefully(ials_dir, tmp_path):
    server = Server(ials_dir, f"sqlite:///{tmp_path / 'events.sqlite'}", workers=2)
    workers = _workers(_children(server.process.pid))
    assert len(workers) == 2
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    assert not any(_alive(p) for p in workers)


def test_serve_says_what_it_serves_where_and_a_taken_port_fails_at_once(ials_dir, tmp_path):
    """uvicorn logs only warnings here, so `recforge serve` printed nothing at all on start-up; and a taken
    port was found only after the model had loaded."""
    port = free_port()
    command = [sys.executable, "-m", "recforge.cli", "serve", "--model", str(ials_dir), "--port", str(port)]
    store = "postgresql://recforge:hunter2@db.example/recforge"  # the password is never printed
    env = {**os.environ, "RECFORGE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*command, "--store", f"sqlite:///{tmp_path / 'events.sqlite'}", "--stale-reads", "30"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith(f"serving {ials_dir} (ials, 943 users, 1,682 items) at http://127.0.0.1:{port}")
        assert "writes need the bearer token" in line and "events: sqlite:///" in line
        assert "(reads answered for 30 s of its outage)" in line
        taken = subprocess.run([*command, "--store", store], env=env, capture_output=True, text=True, timeout=120)
        assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in taken.stderr
        assert "hunter2" not in taken.stdout + taken.stderr
        nothing = [*command[:5], str(tmp_path / "nothing"), "--workers", "2", "--port", str(free_port())]
        wrong = subprocess.run(nothing, env=env, capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and "is not a model artifact directory" in wrong.stderr  # before any worker
        assert "Traceback" not in wrong.stderr and "serving" not in wrong.stdout  # announced, then 2 tracebacks
        for variable, value in (
            ("RECFORGE_STORE_CONNECTIONS", "0"),
            ("RECFORGE_STORE_WAIT", "60s"),
            ("RECFORGE_STALE_READS", "-5"),
        ):
            wrong = subprocess.run(command, env=env | {variable: value}, capture_output=True, text=True, timeout=120)
            assert wrong.returncode == 2 and f"{variable} must be" in wrong.stderr and repr(value) in wrong.stderr
        wrong = subprocess.run([*command, "--stale-reads", "inf"], env=env, capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and "--stale-reads must be a finite number of seconds" in wrong.stderr
    finally:
        process.terminate()
        process.wait(timeout=30)
