"""The engine as deployed: real `recforge serve` processes over a real database. No acknowledged write
is lost when the server is killed mid-write (SQLite and PostgreSQL), a write is visible to the next read
whichever worker serves it, and the store resolves racing item additions to one winner."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from recforge.errors import ConfigError
from recforge.models import create_model
from recforge.serving.engine import Engine
from recforge.serving.store import EventStore, StoreUnavailableError
from tests.serving.servers import (
    Server,
    outcome_within,
    pgbouncer,
    pgbouncer_binary,
    postgres_binaries,
    postgres_cluster,
    postgres_server,
)
from tests.serving.test_api import _artifact

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]


@pytest.fixture(scope="module")
def ials_dir(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=16, n_iterations=4).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("engine") / "ials")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    if postgres_binaries() is None:
        pytest.skip(
            "PostgreSQL is not installed and could not be (make test installs Debian's postgresql package): "
            "the PostgreSQL half of the durability test did not run",
        )
    with postgres_server() as url:
        yield url


def write_until_killed(
    server: Server, users: np.ndarray, items: np.ndarray, seconds: float
) -> tuple[list[dict], list[dict]]:
    """8 clients post single interactions, each with its own Idempotency-Key, as fast as they can; the server
    is SIGKILLed after `seconds`. Returns the writes it acknowledged (with their sequence numbers) and those
    in doubt: sent, and the server died before answering (committed or not)."""
    acknowledged: list[dict] = []
    in_doubt: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with server.client() as client:
            while not stop.is_set():
                user, item = int(rng.choice(users)), int(rng.choice(items))
                write = {"user": user, "item": item, "key": str(uuid.UUID(int=rng.getrandbits(128)))}
                try:
                    response = client.post(
                        f"/users/{user}/interactions",
                        json={"items": [{"item": item}]},
                        headers={"Idempotency-Key": write["key"]},
                    )
                except httpx.HTTPError:
                    with lock:
                        in_doubt.append(write)  # the server died mid-request: not acknowledged
                    return
                if response.status_code in (200, 202):  # 202: committed, not yet applied by that worker
                    with lock:
                        acknowledged.append({**write, "seq": response.json()["seq"]})

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join()
    return acknowledged, in_doubt


NEWCOMERS = np.arange(100_000, 100_020)  # ids the model was not trained with: created by their first write


def served_by(user: int) -> str:
    return "model (new user)" if user in NEWCOMERS else "model (updated)"


def check_nothing_acknowledged_was_lost(artifact, store_url: str, ml100k) -> None:
    """No acknowledged write is lost when the server is killed, and the writes the kill left in doubt,
    retried with their keys on the restarted server, are each stored exactly once (those the dead server had
    committed are answered as replays)."""
    users, items = np.concatenate([ml100k.users.ids[:50], NEWCOMERS]), ml100k.items.ids[:400]
    before = EventStore(store_url).count()  # (a shared PostgreSQL database may hold other tests' events)
    server = Server(artifact, store_url)
    acknowledged, in_doubt = write_until_killed(server, users, items, seconds=4.0)
    assert len(acknowledged) > 50, "too few writes to prove anything"
    stored = {event.seq for event in EventStore(store_url).events_after(0)}
    missing = [w for w in acknowledged if w["seq"] not in stored]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged writes were lost"
    restarted = Server(artifact, store_url)
    try:
        with restarted.client() as client:
            health = client.get("/health").json()
            assert health["events_applied"] >= max(w["seq"] for w in acknowledged)
            for write in random.Random(0).sample(acknowledged, 20):  # the state after replay has them
                body = client.get(f"/users/{write['user']}/recommendations", params={"k": 50}).json()
                assert body["served_by"] == served_by(write["user"])
                assert write["item"] not in [row["item"] for row in body["items"]]
            replayed = 0
            for write in in_doubt + random.Random(1).sample(acknowledged, 10):  # retried: stored once
                body = {"items": [{"item": write["item"]}]}
                answer = client.post(
                    f"/users/{write['user']}/interactions", json=body, headers={"Idempotency-Key": write["key"]}
                )
                assert answer.status_code == 200 and answer.json()["seq"] == write.get("seq", answer.json()["seq"])
                replayed += answer.json()["replayed"] and "seq" not in write
    finally:
        restarted.stop()
    assert EventStore(store_url).count() - before == len(acknowledged) + len(in_doubt)  # none lost, none twice
    print(
        f"{store_url.split(':')[0]}: {len(acknowledged)} acknowledged, {len(stored)} stored, 0 lost; "
        f"{len(in_doubt)} in doubt at the kill, retried: {replayed} had been committed"
    )


def test_sqlite_loses_no_acknowledged_write_when_the_server_is_killed(ials_dir, ml100k, tmp_path):
    check_nothing_acknowledged_was_lost(ials_dir, f"sqlite:///{tmp_path / 'events.sqlite'}", ml100k)


def test_postgresql_loses_no_acknowledged_write_when_the_server_is_killed(ials_dir, ml100k, postgres):
    check_nothing_acknowledged_was_lost(ials_dir, postgres, ml100k)


def test_postgresql_connections_carry_the_stores_timeouts_unless_the_url_sets_them(postgres):
    """The bounds that keep a hung or vanished database from holding requests forever reach libpq."""
    from recforge.serving.store import CONNECTION_BOUNDS

    def parameters(url: str) -> dict[str, str]:
        with EventStore(url).engine.connect() as connection:
            return connection.connection.dbapi_connection.info.get_parameters()

    given = parameters(postgres)
    assert {key: given.get(key) for key in CONNECTION_BOUNDS} == {k: str(v) for k, v in CONNECTION_BOUNDS.items()}
    own = parameters(f"{postgres}{'&' if '?' in postgres else '?'}connect_timeout=3&tcp_user_timeout=5000")
    assert own["connect_timeout"] == "3" and own["tcp_user_timeout"] == "5000" and own["keepalives_idle"] == "30"
    # a connection opened inside a read starts within the read's silence bound, unless the URL says otherwise
    from recforge.serving.silence import bounded

    def opened_within_a_read(url: str) -> dict[str, str]:
        store = EventStore(url)
        store.engine.dispose()  # no pooled connection left: the next one is opened inside the bound
        with bounded(4.2), store.engine.connect() as connection:
            return connection.connection.dbapi_connection.info.get_parameters()

    assert opened_within_a_read(postgres)["connect_timeout"] == "5"
    own_url = f"{postgres}{'&' if '?' in postgres else '?'}connect_timeout=20"
    assert opened_within_a_read(own_url)["connect_timeout"] == "20"


def test_through_pgbouncer_in_transaction_pooling_no_acknowledged_write_is_lost(ials_dir, ml100k):
    """Many PostgreSQL deployments put PgBouncer in front, in transaction pooling (a client's transactions
    may each run on another server connection, so nothing may outlive a transaction: session settings,
    session advisory locks, prepared statements of older PgBouncers). Eight clients write through it into a
    server that is then killed: every acknowledged write is stored, and the restarted server has them."""
    if postgres_binaries() is None or pgbouncer_binary() is None:
        pytest.skip("PostgreSQL or PgBouncer is not installed (make test installs Debian's packages)")
    with postgres_cluster() as database, pgbouncer(database, "transaction", pool_size=2) as url:
        check_nothing_acknowledged_was_lost(ials_dir, url, ml100k)


def test_a_database_restart_refuses_writes_says_why_and_recovers_without_a_restart(ials_dir, ml100k):
    """PostgreSQL restarted under a running service (maintenance, a failover): while it is down, writes
    answer 503 and store nothing, reads answer 503 too (a worker cannot tell whether another acknowledged a
    write it has not applied yet), `/health` stays 200 but says "degraded" and why, and `/ready` answers
    503; once it is back, the same processes write and read again at the first request, each worker logs
    the outage once and its end once, and the store holds exactly the acknowledged writes."""
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    user, items = int(ml100k.users.ids[0]), [int(i) for i in ml100k.items.ids[1500:1503]]
    write = lambda client, item: client.post(f"/users/{user}/interactions", json={"items": [{"item": item}]})  # noqa: E731
    with postgres_cluster() as database:
        server = Server(ials_dir, database.url, workers=2)
        try:
            server.wait_workers(2)  # a worker still starting when the database stops waits instead (tested below)
            with server.client() as client:
                assert write(client, items[0]).status_code == 200 and client.get("/ready").status_code == 200
                database.stop()
                refused = write(client, items[1])
                assert refused.status_code == 503 and "event store" in refused.json()["detail"], refused.text
                assert client.get(f"/users/{user}/recommendations").status_code == 503
                health = client.get("/health")
                assert health.status_code == 200 and health.json()["status"] == "degraded"
                assert health.json()["store"].startswith("unavailable: the event store cannot be read")
                assert client.get("/ready").status_code == 503
                time.sleep(2.5)  # the workers' follower threads meet the outage a few times
                database.start()
                assert write(client, items[2]).status_code == 200  # the pool replaces its dead connections
                assert client.get("/ready").json() == {"ready": True, "events_applied": 2}
                assert client.get("/health").json()["store"] == "ok"
                body = client.get(f"/users/{user}/recommendations", params={"k": 50}).json()
                assert not {items[0], items[2]} & {row["item"] for row in body["items"]}  # both seen now
                time.sleep(1.5)  # every worker's follower has found the store again
            stored = [event.payload["items"] for event in EventStore(database.url).events_after(0)]
            assert stored == [[items[0]], [items[2]]]
        finally:
            server.stop()
            said = server.process.stderr.read().decode()
            print(said[-5000:])  # shown with a failure
    assert said.count("catching up with the event store failed") == 2, said[-3000:]  # once per worker
    assert said.count("the event store answers again") == said.count("catching up with the event store failed")


def test_with_stale_reads_a_database_outage_keeps_reads_answered_for_their_allowance(ials_dir, ml100k):
    """`recforge serve --stale-reads 4` over PostgreSQL with two workers: while the database is down, writes
    answer 503 and store nothing, reads are answered from each worker's last confirmed state (which holds
    the write acknowledged before the outage) and carry X-Recforge-Stale, `/ready` stays 200 with
    `stale_seconds`; past the allowance reads answer 503 and `/ready` too; once the database is back, both
    workers answer plain reads and take writes again."""
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    allowed = 4.0
    user, items = int(ml100k.users.ids[0]), [int(i) for i in ml100k.items.ids[1500:1503]]
    write = lambda client, item: client.post(f"/users/{user}/interactions", json={"items": [{"item": item}]})  # noqa: E731
    read = lambda client: client.get(f"/users/{user}/recommendations", params={"k": 50})  # noqa: E731
    with postgres_cluster() as database:
        server = Server(ials_dir, database.url, workers=2, extra=["--stale-reads", str(allowed)])
        try:
            server.wait_workers(2)
            with server.client() as client:
                assert write(client, items[0]).status_code == 200
                time.sleep(1.5)  # both workers' followers have applied it (a read would catch up anyway)
                database.stop()
                stopped = time.monotonic()
                assert write(client, items[1]).status_code == 503
                answered_by = set()
                for _ in range(40):  # a new connection each: either worker may take it
                    if len(answered_by) == 2:
                        break
                    with server.client() as fresh:
                        answer = read(fresh)
                        assert answer.status_code == 200, answer.text
                        assert 0 <= float(answer.headers["x-recforge-stale"]) <= allowed
                        assert items[0] not in {row["item"] for row in answer.json()["items"]}  # seen before
                        answered_by.add(fresh.get("/health").json()["worker"])  # the same connection's worker
                assert len(answered_by) == 2, "one worker took every connection"
                ready = client.get("/ready")
                assert ready.status_code == 200 and 0 <= ready.json()["stale_seconds"] <= allowed
                time.sleep(max(0.0, allowed + 0.5 - (time.monotonic() - stopped)))
                for _ in range(6):
                    with server.client() as fresh:
                        assert read(fresh).status_code == 503 and fresh.get("/ready").status_code == 503
                database.start()
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:  # the first read after the database is back confirms
                    answers = []
                    for _ in range(6):
                        with server.client() as fresh:
                            answers.append(read(fresh))
                    if all(a.status_code == 200 and "x-recforge-stale" not in a.headers for a in answers):
                        break
                    time.sleep(0.2)
                else:
                    raise AssertionError([(a.status_code, dict(a.headers)) for a in answers])
                assert write(client, items[2]).status_code == 200
            stored = [event.payload["items"] for event in EventStore(database.url).events_after(0)]
            assert stored == [[items[0]], [items[2]]]
        finally:
            server.stop()
            print(server.process.stderr.read().decode()[-5000:])  # shown with a failure


def test_a_service_started_before_its_database_waits_for_it(ials_dir, ml100k):
    """Deployments start the service and PostgreSQL together (compose, a restart of both): a worker whose
    database does not answer yet waits for it (RECFORGE_STORE_WAIT, default 60 s) instead of failing, which
    stopped the whole server — also when the second worker started during an outage the first survived."""
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    with postgres_cluster() as database:
        database.stop()
        restart = threading.Timer(4.0, database.start)
        restart.start()
        started = time.monotonic()
        try:
            server = Server(ials_dir, database.url, workers=2)  # ready once a worker answers /health
        finally:
            restart.join()  # the database is up before anything else happens to it
        try:
            assert time.monotonic() - started > 3.0  # it did wait for the database
            with server.client() as client:
                user, item = int(ml100k.users.ids[0]), int(ml100k.items.ids[1500])
                assert client.post(f"/users/{user}/interactions", json={"items": [{"item": item}]}).status_code == 200
                assert client.get("/ready").status_code == 200
        finally:
            server.stop()
            said = server.process.stderr.read().decode()
            print(said[-5000:])  # shown with a failure
    assert "waiting up to 60s for the event store postgresql://postgres@127.0.0.1" in said


def test_a_worker_whose_database_stops_while_it_loads_its_model_waits_for_it(ials_dir, ml100k, caplog):
    """The store opened, then PostgreSQL stopped while the worker was still loading its model (CI met it: a
    second worker starting during the restart test's outage): the start-up's reads of the store wait for
    the database as the opening does, instead of failing the start-up, which stops the whole server."""
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    with postgres_cluster() as database:
        store = EventStore(database.url)
        user, item = int(ml100k.users.ids[0]), int(ml100k.items.ids[1500])
        store.append("interactions", {"user": user, "items": [item], "ratings": [None]}, user=str(user))
        database.stop()
        with pytest.raises(StoreUnavailableError):
            Engine.open(ials_dir, store)  # no patience: fails at once, as before
        restart = threading.Timer(2.0, database.start)
        restart.start()
        try:
            with caplog.at_level("WARNING", logger="recforge.serving.store"):
                engine = Engine.open(ials_dir, store, wait=60)
        finally:
            restart.join()
        assert engine.applied == 1 and "waiting up to 60s for the event store" in caplog.text
        store.close()


def test_a_store_url_the_database_refuses_fails_at_once_instead_of_waiting(postgres):
    """Waiting mends a database that does not answer yet, not a misspelt database or user name: those
    fail the start-up at once with PostgreSQL's own words (they waited the full RECFORGE_STORE_WAIT)."""
    started = time.monotonic()
    with pytest.raises(ConfigError, match='database "nosuchdb" does not exist'):
        EventStore(postgres.rsplit("/", 1)[0] + "/nosuchdb", wait=60)
    with pytest.raises(ConfigError, match='role "nobody" does not exist'):
        EventStore(postgres.replace("postgres@", "nobody@"), wait=60)
    assert time.monotonic() - started < 10


def _self_signed(folder, name: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, made with openssl; owned by the
    postgres user when the tests run as root (the server refuses a key others can read)."""
    certificate, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    if os.geteuid() == 0:
        for path in (certificate, key):
            shutil.chown(path, "postgres", "postgres")
    return str(certificate), str(key)


def test_tls_to_postgresql_works_and_a_certificate_that_fails_is_refused_at_once():
    """A database reached over TLS (`?sslmode=require`, or `verify-full` against its CA), and the settings
    that cannot work — a certificate from another CA, TLS asked of a server without it, a misspelt sslmode —
    fail the start-up at once with libpq's words instead of after RECFORGE_STORE_WAIT."""
    if postgres_binaries() is None or shutil.which("openssl") is None:
        pytest.skip("PostgreSQL or openssl is not installed (make test installs Debian's packages)")
    folder = Path(tempfile.mkdtemp(prefix="recforge-tls-"))  # under /tmp: the postgres user reaches it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    try:
        certificate, key = _self_signed(folder, "server")
        other, _ = _self_signed(folder, "other")
        settings = f"-c ssl=on -c ssl_cert_file={certificate} -c ssl_key_file={key}"
        event = {"user": 1, "items": [1], "ratings": [None]}
        with postgres_cluster(settings) as database:
            for query in ("sslmode=require", f"sslmode=verify-full&sslrootcert={certificate}"):
                store = EventStore(f"{database.url}?{query}")
                assert store.append("interactions", event, user="1") == store.latest_seq()
                with store.engine.connect() as connection:  # the server says the connection is encrypted
                    encrypted = connection.exec_driver_sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    assert encrypted.scalar() is True
            started = time.monotonic()
            with pytest.raises(ConfigError, match="certificate verify failed"):
                EventStore(f"{database.url}?sslmode=verify-full&sslrootcert={other}", wait=60)
            with pytest.raises(ConfigError, match='invalid sslmode value: "requird"'):
                EventStore(f"{database.url}?sslmode=requird", wait=60)
            assert time.monotonic() - started < 10
        with postgres_cluster() as plain:
            started = time.monotonic()
            with pytest.raises(ConfigError, match="server does not support SSL, but SSL was required"):
                EventStore(f"{plain.url}?sslmode=require", wait=60)
            assert time.monotonic() - started < 10
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_refused_password_fails_at_once_and_the_right_one_opens(tmp_path):
    """The server asks for passwords over TCP (scram-sha-256; its local socket stays trusted, to set one):
    a wrong password is PostgreSQL's "password authentication failed", at once, never the password itself."""
    import psycopg

    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    with postgres_cluster() as database:
        rules = database.folder / "pg_hba.conf"
        rules.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        rules.chmod(0o644)
        with psycopg.connect(database.url, autocommit=True) as connection:
            connection.execute("ALTER USER postgres PASSWORD 'right-one'")
        database.stop()
        database.options += f" -c hba_file={rules}"
        database.start()
        started = time.monotonic()
        wrong = database.url.replace("postgres@", "postgres:wrong-one@")
        with pytest.raises(ConfigError, match='password authentication failed for user "postgres"') as info:
            EventStore(wrong, wait=60)
        assert time.monotonic() - started < 10 and "wrong-one" not in str(info.value)
        store = EventStore(database.url.replace("postgres@", "postgres:right-one@"), wait=60)
        assert store.latest_seq() == 0
        store.close()


def test_a_database_out_of_connections_is_logged_in_its_words_and_the_pool_is_bounded(caplog):
    """Workers x connections beyond PostgreSQL's max_connections made requests answer 503 "OperationalError"
    with nothing anywhere saying why: the database's words go to the log (once a minute per reason) with
    what to change, clients still get no host or port, and `connections` bounds what one process opens."""
    import psycopg

    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    with postgres_cluster("-c max_connections=4 -c superuser_reserved_connections=0") as database:
        store = EventStore(database.url, connections=3)
        assert (store.engine.pool.size(), store.engine.pool._max_overflow) == (2, 1)
        others = [psycopg.connect(database.url) for _ in range(3)]  # the store's pool keeps one: all 4 taken
        try:
            with store._connection(), caplog.at_level("WARNING", logger="recforge.serving.store"):
                for _ in range(2):  # the pooled connection is busy: the read needs a fifth
                    with pytest.raises(StoreUnavailableError) as refused:
                        store.committed_seq()
                    assert str(refused.value) == "the event store cannot be read: OperationalError"
        finally:
            for connection in others:
                connection.close()
        said = [r.getMessage() for r in caplog.records if "too many clients already" in r.getMessage()]
        assert len(said) == 1 and "RECFORGE_STORE_CONNECTIONS" in said[0] and "max_connections" in said[0], said
        assert said[0].startswith(f"the event store postgresql://postgres@127.0.0.1:{database.port}/postgres cannot")
        assert store.committed_seq() == 0  # connections freed: answers again
        store.close()
    with pytest.raises(ConfigError, match="connections must be a whole number of at least 1, not 0"):
        EventStore("postgresql://nobody@127.0.0.1:1/db", connections=0)


def test_two_workers_read_their_writes_every_time(ials_dir, ml100k, tmp_path):
    check_two_workers_read_their_writes(ials_dir, f"sqlite:///{tmp_path / 'events.sqlite'}", ml100k, 1000)


@pytest.mark.parametrize(("mode", "pool_size"), [("transaction", 2), ("session", 40)])
def test_two_workers_read_their_writes_through_pgbouncer(ials_dir, ml100k, mode, pool_size):
    """Transaction pooling hands each of a worker's transactions to any server connection: a write committed
    through one is still seen by the other worker's next read. Session pooling (a server connection per
    client connection while it lasts, so the pool must hold every worker's connections: 2 x 16) likewise."""
    if postgres_binaries() is None or pgbouncer_binary() is None:
        pytest.skip("PostgreSQL or PgBouncer is not installed (make test installs Debian's packages)")
    with postgres_cluster() as database, pgbouncer(database, mode, pool_size=pool_size) as url:
        check_two_workers_read_their_writes(ials_dir, url, ml100k, 300)


def check_two_workers_read_their_writes(ials_dir, store_url: str, ml100k, writes: int) -> None:
    server = Server(ials_dir, store_url, workers=2)
    rng = np.random.default_rng(0)
    users, items = np.concatenate([ml100k.users.ids, NEWCOMERS]), ml100k.items.ids
    try:
        pids = set()
        for n in range(writes):
            user, item = int(rng.choice(users)), int(rng.choice(items))
            # a new connection per request, so the two worker processes share the pairs
            with server.client() as client:
                write = client.post(f"/users/{user}/interactions", json={"items": [{"item": item}]})
            assert write.status_code == 200, write.text
            with server.client() as client:
                read = client.get(f"/users/{user}/recommendations", params={"k": 20})
                if n % 20 == 0:  # which worker answers (a third of the requests when asked every time)
                    pids.add(client.get("/health").json()["worker"])
            body = read.json()
            assert body["served_by"] == served_by(user) and item not in [r["item"] for r in body["items"]], n
        assert len(pids) == 2  # both workers served
    finally:
        server.stop()


def test_postgresql_sequence_numbers_become_visible_in_order(postgres):
    """A writer mid-transaction holds its sequence number; a second writer must wait for it to commit,
    or readers would see seq n+1 before n and a worker would skip n for good."""
    store = EventStore(postgres)
    before = store.latest_seq()
    later: list[int] = []
    with store.engine.begin() as slow:
        store.serialize_writers(slow)
        held = store._insert(slow, "interactions", {"user": 1, "items": [1], "ratings": [None]}, "1")
        second = threading.Thread(
            target=lambda: later.append(store.append("interactions", {"user": 2, "items": [2], "ratings": [None]}))
        )
        second.start()
        time.sleep(1.0)
        assert second.is_alive() and not later, "a second writer committed while an earlier number was open"
        assert store.latest_seq() == before  # nothing newer than the open transaction is visible
    second.join(timeout=30)
    assert later and later[0] > held and store.latest_seq() == later[0]


def test_postgresql_commits_each_idempotency_key_once_across_workers(postgres):
    """Two workers' stores on one PostgreSQL database, eight threads sending each of two keys at once, and an
    item addition retried: one event per key, every sender told its seq, a key reused for another request
    refused (the writers' table lock makes each key's lookup and claim one step)."""
    from recforge.serving.store import AlreadyCommitted, RequestKey, RequestKeyReusedError

    stores = [EventStore(postgres), EventStore(postgres)]
    before, outcomes = stores[0].count(), []
    start = threading.Barrier(8)

    def write(n: int) -> None:
        start.wait()
        key = RequestKey(f"pg-key-{n % 2}", "same")
        try:
            outcomes.append(
                stores[n // 4].append("interactions", {"user": n, "items": [1], "ratings": [None]}, key=key)
            )
        except AlreadyCommitted as exc:
            outcomes.append(-exc.seq)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].count() == before + 2
    written = sorted(o for o in outcomes if o > 0)
    assert len(written) == 2 and sorted({abs(o) for o in outcomes}) == written
    key = RequestKey("pg-items", "same")
    seq = stores[0].append_items(["pg-item-1"], {"items": [{"item": "pg-item-1"}]}, key=key)
    with pytest.raises(AlreadyCommitted) as retried:
        stores[1].append_items(["pg-item-1"], {"items": [{"item": "pg-item-1"}]}, key=key)
    assert retried.value.seq == seq == stores[1].committed_request(key)
    with pytest.raises(RequestKeyReusedError):
        stores[1].append("interactions", {"user": 1, "items": [1], "ratings": [None]}, key=RequestKey("pg-items", "x"))
    assert stores[0].count() == before + 3


def test_a_writer_stuck_holding_the_lock_makes_other_writes_fail_after_the_lock_timeout(postgres, monkeypatch):
    """A write transaction that never ends (a paused worker, a forgotten psql session) holds the writers'
    lock: other writes give up after WRITE_LOCK_SECONDS with StoreUnavailableError (503) and store nothing,
    instead of waiting forever; reads are not blocked meanwhile, and writes succeed once it ends."""
    from recforge.serving import store as store_module

    monkeypatch.setattr(store_module, "WRITE_LOCK_SECONDS", 1.0)
    store = EventStore(postgres)
    before = store.latest_seq()
    event = {"user": 1, "items": [1], "ratings": [None]}
    outcome: list[BaseException | int] = []

    def write() -> None:
        try:
            outcome.append(store.append("interactions", event, user="1"))
        except StoreUnavailableError as exc:
            outcome.append(exc)

    with store.engine.begin() as stuck:
        store.serialize_writers(stuck)
        started = time.monotonic()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(15)
        assert not writer.is_alive(), "the write still waits for the stuck writer's lock"
        assert isinstance(outcome[0], StoreUnavailableError) and "refused the write" in str(outcome[0])
        assert 0.8 < time.monotonic() - started < 10
        assert store.latest_seq() == before  # a read is not blocked, and nothing was stored
    seq = store.append("interactions", event, user="1")
    assert seq > before and store.latest_seq() == seq


@pytest.mark.parametrize("through", ["direct", "pgbouncer"])
def test_a_paused_database_server_fails_reads_and_writes_after_their_silence_bound(ials_dir, monkeypatch, through):
    """A PostgreSQL server that accepts and acknowledges but never answers (SIGSTOP: a frozen host, a stalled
    disk) held a read on a pooled connection forever (no libpq timeout covers it), and with it the stale-reads
    allowance, which only begins when a read fails. Reads now give up after READ_SILENCE without a word from the
    server, writes after SLOW_SILENCE; a service with stale reads answers from its state meanwhile; everything
    works again once the server resumes. Through PgBouncer (transaction pooling) too, where the client's own
    connection stays answered by PgBouncer and only the server behind it is silent."""
    from recforge.serving import silence
    from recforge.serving.service import STORE_RETRY, RecommenderService

    monkeypatch.setattr(silence, "READ_SILENCE", 1.0)
    monkeypatch.setattr(silence, "SLOW_SILENCE", 2.0)
    if postgres_binaries() is None or (through == "pgbouncer" and pgbouncer_binary() is None):
        pytest.skip("PostgreSQL or PgBouncer is not installed (make test installs Debian's packages)")
    with postgres_cluster() as database, contextlib.ExitStack() as stack:
        url = database.url if through == "direct" else stack.enter_context(pgbouncer(database, "transaction", 2))
        url += "?connect_timeout=1"  # the pool replaces the closed connection: bound that too
        store = EventStore(url)
        before = store.append("interactions", {"user": 1, "items": [1], "ratings": [None]}, user="1")
        service = RecommenderService.from_artifact(ials_dir, store=url, stale_reads=60)
        assert service.current() is not None and store.committed_seq() == before  # pooled connections
        with database.paused():
            read, seconds = outcome_within(store.committed_seq)
            assert isinstance(read, StoreUnavailableError) and "cannot be read" in str(read), read
            assert 0.9 < seconds < 8, seconds  # the ping's silence, then a connection that cannot open
            write, seconds = outcome_within(lambda: store.append("interactions", {"user": 1, "items": [2]}))
            assert isinstance(write, StoreUnavailableError) and "refused the write" in str(write), write
            assert seconds < 10, seconds
            snapshot, seconds = outcome_within(service.current)
            assert snapshot is service.engine.snapshot and service.stale_answers == 1 and seconds < 8
        back = _until_answered(store.committed_seq)
        assert back == before  # the given-up write was never committed
        assert store.append("interactions", {"user": 1, "items": [3], "ratings": [None]}, user="1") == before + 1
        time.sleep(STORE_RETRY)  # a store that failed under STORE_RETRY ago is not asked by every read
        service.current()
        assert service.engine.applied == before + 1 and service.stale_answers == 1


def test_a_server_paused_again_and_again_under_load_loses_nothing_and_answers_only_2xx_or_503(ials_dir, ml100k):
    """Chaos under load: two `recforge serve` workers with stale reads (30 s) on PostgreSQL, six writers and
    four readers, while the whole database server is paused (SIGSTOP) for 2, 12 and 4 s with 3 s between.
    Every answer is 200, 202 or 503 (no 500, no dropped connection), every acknowledged write is stored, stale
    reads are answered during the pauses, no read takes 3 s (a read's ask waits at most STALE_PATIENCE before
    the read is answered stale: reads asking as the server went silent used to wait out the silence bound,
    up to 9 s), and both workers end on the same last event. Writers send each write with its own
    Idempotency-Key and retry it after a 503 or a broken connection until it is acknowledged: every event is
    one key's (none committed twice, none without its key), and each acknowledged key's event is the seq its
    answer gave. (Longer runs, six pauses of 1.5-12 s: 5,780-6,475 writes acknowledged, all stored, 85-94k
    stale answers, no read over 0.52 s.)"""
    import collections

    import sqlalchemy as sa

    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    users, items = ml100k.users.ids[:100], ml100k.items.ids[:500]
    with postgres_cluster() as database:
        server = Server(ials_dir, database.url, workers=2, extra=["--stale-reads", "30"])
        try:
            server.wait_workers(2)
            stop, lock = threading.Event(), threading.Lock()
            acknowledged, statuses, stale, slowest_read = {}, collections.Counter(), [0], [0.0]

            def client_loop(seed: int, write: bool) -> None:
                rng, retry = random.Random(seed), None  # retry: (key, user, body) of a write not acknowledged
                with server.client() as client:
                    client.timeout = httpx.Timeout(90)  # longer than any bound: a stuck request shows as slow
                    while not stop.is_set():
                        user = int(rng.choice(users))
                        try:
                            if write:
                                key, user, body = retry or (
                                    str(uuid.UUID(int=rng.getrandbits(128))),
                                    user,
                                    {"items": [{"item": int(rng.choice(items))}]},
                                )
                                retry = (key, user, body)
                                headers = {"Idempotency-Key": key}
                                answer = client.post(f"/users/{user}/interactions", json=body, headers=headers)
                            else:
                                started = time.monotonic()
                                answer = client.get(f"/users/{user}/recommendations")
                                took = time.monotonic() - started
                        except httpx.HTTPError as exc:
                            answer = exc
                        with lock:
                            if not write and not isinstance(answer, Exception):
                                slowest_read[0] = max(slowest_read[0], took)
                            statuses[getattr(answer, "status_code", type(answer).__name__)] += 1
                            if write and getattr(answer, "status_code", 0) in (200, 202):
                                acknowledged[key] = answer.json()["seq"]
                                statuses["replayed"] += answer.json()["replayed"]
                                retry = None
                            if not write and "x-recforge-stale" in getattr(answer, "headers", {}):
                                stale[0] += 1

            threads = [threading.Thread(target=client_loop, args=(seed, seed < 6)) for seed in range(10)]
            for thread in threads:
                thread.start()
            for pause in (2.0, 12.0, 4.0):
                time.sleep(3.0)
                with database.paused():
                    time.sleep(pause)
            time.sleep(3.0)
            stop.set()
            for thread in threads:
                thread.join(120)
            assert not any(thread.is_alive() for thread in threads)
            assert set(statuses) <= {200, 202, 503, "replayed"}, statuses
            assert len(acknowledged) > 200 and stale[0] > 0, (len(acknowledged), stale[0])
            assert slowest_read[0] < 3.0, slowest_read
            store = EventStore(database.url)
            stored = [event.seq for event in store.events_after(0)]
            with store.engine.connect() as connection:
                keys = dict(connection.execute(sa.text("SELECT request_key, seq FROM recforge_requests")).all())
            assert sorted(keys.values()) == stored  # every event is one key's write, and no key's twice
            assert all(keys[key] == seq for key, seq in acknowledged.items())  # acknowledged as committed
            latest, applied, deadline = max(stored), {}, time.monotonic() + 30
            while time.monotonic() < deadline and not (len(applied) == 2 and set(applied.values()) == {latest}):
                with httpx.Client(base_url=server.url, timeout=5) as client:  # a new connection: either worker
                    health = client.get("/health").json()
                applied[health["worker"]] = health["events_applied"]
            assert applied and set(applied.values()) == {latest} and len(applied) == 2, (applied, latest)
        finally:
            server.stop()


def _until_answered(call, seconds: float = 30.0):
    """`call()` once it stops failing with StoreUnavailableError (connections the outage broke are replaced
    as they are met)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_postgresql_store_made_without_the_kind_index_gets_it_once(postgres):
    """A store made by an older recforge (no kind index, no idempotency keys' table) gets both at its next
    opening, and keyed writes work on it."""
    import sqlalchemy as sa

    from recforge.serving.store import AlreadyCommitted, RequestKey

    store = EventStore(postgres)
    with store.engine.begin() as connection:
        connection.execute(sa.text("DROP INDEX recforge_events_kind_seq"))  # as a store of an older recforge
        connection.execute(sa.text("DROP TABLE recforge_requests"))
    store = EventStore(postgres)
    with store.engine.connect() as connection:
        names = connection.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'recforge_events'"))
        assert "recforge_events_kind_seq" in set(names.scalars())
    key, event = RequestKey("after-upgrade", "f"), {"user": 1, "items": [1], "ratings": [None]}
    seq = store.append("interactions", event, user="1", key=key)
    with pytest.raises(AlreadyCommitted):
        EventStore(postgres).append("interactions", event, user="1", key=key)  # and opening again finds them
    assert store.committed_request(key) == seq


def test_a_worker_waiting_on_another_workers_schema_transaction_is_not_cut_by_the_silence_bound(postgres, monkeypatch):
    """The schema transaction (creating the tables, or the index an upgrade adds to a large log: minutes of
    silence) and the workers waiting their turn for it are bounded by SCHEMA_WAIT, not the write bound:
    cut at 30 s, every retry would start the index build again and no worker would ever start."""
    import sqlalchemy as sa

    from recforge.serving import silence
    from recforge.serving.store import SCHEMA_LOCK_KEY

    monkeypatch.setattr(silence, "SLOW_SILENCE", 1.0)  # also the bound outside any block
    monkeypatch.setattr(silence, "READ_SILENCE", 1.0)
    holder, taken = EventStore(postgres), threading.Event()

    def another_workers_schema_transaction() -> None:
        with holder.engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            taken.set()
            time.sleep(3.0)

    thread = threading.Thread(target=another_workers_schema_transaction, daemon=True)
    thread.start()
    assert taken.wait(10)
    opened, seconds = outcome_within(lambda: EventStore(postgres), 30)
    assert isinstance(opened, EventStore) and seconds > 2.0, (opened, seconds)  # waited its turn, not cut
    thread.join(10)


def test_a_read_behind_ddl_that_locks_the_events_table_gives_up_after_the_read_silence(postgres, monkeypatch):
    """`VACUUM FULL` or `ALTER TABLE` on the events table locks readers out; a read waits READ_SILENCE for
    it, not for the whole operation, and reads answer again once it ends."""
    from recforge.serving import silence

    monkeypatch.setattr(silence, "READ_SILENCE", 1.0)
    store = EventStore(postgres)
    before = store.latest_seq()
    with store.engine.begin() as ddl:
        ddl.execute(store._sa.text("LOCK TABLE recforge_events IN ACCESS EXCLUSIVE MODE"))
        read, seconds = outcome_within(store.committed_seq)
        assert isinstance(read, StoreUnavailableError) and 0.9 < seconds < 5, (read, seconds)
    assert store.committed_seq() == before


def open_fresh_store_together(url: str, processes: int = 6) -> list[str]:
    """`processes` Python processes open an EventStore on `url` at the same instant (as the workers of
    `recforge serve --workers N` do on a fresh store); returns each one's outcome ("ok" or the error)."""
    import sys

    start_at = time.time() + 1.5  # after every interpreter has imported SQLAlchemy
    code = (
        "import sys, time; from recforge.serving.store import EventStore; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); EventStore(sys.argv[1]); print('ok')"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", code, url, str(start_at)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(processes)
    ]  # fmt: skip
    return [child.communicate(timeout=60)[0].strip().splitlines()[-1] for child in children]


def test_workers_creating_a_fresh_sqlite_store_together_all_start(tmp_path):
    """Two workers starting on a new store both found its tables missing and the slower CREATE TABLE
    failed ("table recforge_items already exists"), stopping `recforge serve --workers 2` (seen about one
    start in twenty). Every process must open the store, and it must work afterwards."""
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'events-{attempt}.sqlite'}"
        assert open_fresh_store_together(url) == ["ok"] * 6
        assert EventStore(url).append("interactions", {"user": 1, "items": [1], "ratings": [None]}, "1") == 1


def test_workers_creating_a_fresh_postgresql_store_together_all_start(postgres):
    import sqlalchemy as sa

    admin = sa.create_engine("postgresql+psycopg://" + postgres.removeprefix("postgresql://"),
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    for attempt in range(3):
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE fresh_{attempt}"))
        url = postgres.rsplit("/", 1)[0] + f"/fresh_{attempt}"
        assert open_fresh_store_together(url) == ["ok"] * 6
        assert EventStore(url).append("interactions", {"user": 1, "items": [1], "ratings": [None]}, "1") == 1
    admin.dispose()
