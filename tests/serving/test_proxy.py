"""The reverse proxy we recommend (deploy/nginx.conf) in front of a real `recforge serve`: a thousand
clients trickling header lines neither starve normal requests nor keep their connections past the header
timeout; oversized bodies stop at the proxy. nginx comes from Debian's package (`make test` installs it)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from recforge.models import create_model
from tests.serving.servers import TOKEN, Server, free_port
from tests.serving.test_api import _artifact

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
SLOW_CLIENTS = 1000
HEADER_TIMEOUT = 10  # client_header_timeout in deploy/nginx.conf


@pytest.fixture(scope="module")
def proxied(ml100k, tmp_path_factory):
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if nginx is None:
        pytest.skip(
            "nginx is not installed and could not be (make test installs Debian's nginx-light): "
            "the reverse-proxy test did not run"
        )
    root = tmp_path_factory.mktemp("proxy")
    artifact = _artifact(create_model("ials", n_factors=16, n_iterations=4).fit(ml100k), ml100k, root / "ials")
    server = Server(artifact, f"sqlite:///{root / 'events.sqlite'}")
    port = free_port()
    text = CONFIG.read_text()
    assert "client_header_timeout 10s;" in text
    text = re.sub(r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{server.port};", text)
    text = re.sub(r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{port};", text)
    for folder in ("logs", "tmp"):
        (root / folder).mkdir()
    (root / "nginx.conf").write_text(text)
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    process = subprocess.Popen(
        [nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url, port
    finally:
        process.terminate()
        process.wait(timeout=20)
        server.stop()


def test_slow_clients_neither_starve_others_nor_outlive_the_header_timeout(proxied):
    url, port = proxied
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SLOW_CLIENTS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SLOW_CLIENTS + 1000), hard))
    slow: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(SLOW_CLIENTS):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            slow.append(connection)
        answered, latencies = 0, []
        with httpx.Client(base_url=url, timeout=5) as client:
            while time.monotonic() - started < HEADER_TIMEOUT - 3:
                for connection in slow[::50]:  # keep trickling: a header line every few seconds
                    with contextlib.suppress(OSError):
                        connection.sendall(b"X-Slow: 1\r\n")
                begin = time.perf_counter()
                response = client.get("/users/1/recommendations", params={"k": 10})
                latencies.append(time.perf_counter() - begin)
                answered += response.status_code == 200
        assert answered == len(latencies) > 100  # every normal request is served while 1,000 trickle
        assert sorted(latencies)[int(0.99 * len(latencies))] < 0.5
        time.sleep(max(0.0, started + HEADER_TIMEOUT + 3 - time.monotonic()))
        closed = sum(closed_by_peer(connection) for connection in slow)
        assert closed == SLOW_CLIENTS, f"{SLOW_CLIENTS - closed} slow connections outlived the header timeout"
    finally:
        for connection in slow:
            connection.close()


def test_the_proxy_refuses_oversized_bodies_and_passes_tokens(proxied):
    url, _ = proxied
    with httpx.Client(base_url=url, timeout=10) as client:
        big = client.post("/recommendations", content=b"{" + b" " * (2 << 20) + b"}")
        assert big.status_code == 413
        unauthorised = client.post("/users/1/interactions", json={"items": [{"item": 50}]})
        assert unauthorised.status_code in (401, 403)
        written = client.post(
            "/users/1/interactions",
            json={"items": [{"item": 50}]},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert written.status_code == 200 and written.json()["seq"] >= 1


def closed_by_peer(connection: socket.socket) -> bool:
    """True when the other end closed (after whatever it sent, e.g. a 408), False if it is still open."""
    connection.settimeout(0.5)
    try:
        while connection.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
