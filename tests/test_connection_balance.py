"""Connections spread evenly over the server's workers (api.connection_balance): the shared
table across real forked processes, the middleware over ASGI, and the production server
(granian, two workers) evening out 20 keep-alive connections over real HTTP."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from api import connection_balance
from api.connection_balance import ConnectionBalancer, WorkerTable, excess

REPO = Path(__file__).resolve().parent.parent
ENCLAVE = REPO / ".venv" / "bin" / "enclave"


@pytest.mark.parametrize(("mine", "total", "workers", "give_up"), [
    (13, 20, 2, 3), (14, 20, 2, 4), (10, 20, 2, 0), (7, 20, 2, 0), (11, 21, 2, 0),
    (12, 21, 2, 1), (5, 5, 1, 0), (4, 9, 4, 1), (0, 0, 2, 0)])
def test_a_worker_gives_up_what_it_holds_beyond_its_share(
        mine: int, total: int, workers: int, give_up: int) -> None:
    assert excess(mine, total, workers) == give_up


def _other_worker(table: WorkerTable, count: int, claimed: Any, leave: Any) -> None:
    slot = table.claim(os.getpid())
    assert slot is not None
    table.publish(slot, count)
    claimed.set()
    leave.wait(10)


def test_the_table_is_shared_with_forked_workers_and_a_dead_ones_slot_is_reclaimed() -> None:
    fork = multiprocessing.get_context("fork")
    table = WorkerTable(2)
    claimed, leave = fork.Event(), fork.Event()
    other = fork.Process(target=_other_worker, args=(table, 7, claimed, leave))
    other.start()
    try:
        assert claimed.wait(10)
        mine = table.claim(os.getpid())
        assert mine is not None
        assert table.claim(os.getpid()) == mine  # the same slot again
        assert table.publish(mine, 3) == 10  # the other process's 7 and these 3
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            assert table.claim(sleeper.pid) is None  # both slots are held by live workers
            leave.set()
            other.join(10)
            assert table.publish(mine, 3) == 3  # an exited worker's count no longer counts
            assert table.claim(sleeper.pid) not in (None, mine)  # its slot is taken over
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        leave.set()
        other.join(10)


def _claim_together(table: WorkerTable, start: Any) -> None:
    write = table._write

    def slow_write(*slot: int) -> None:  # widens the window between finding a slot free
        time.sleep(0.05)                  # and taking it, where a race would show
        write(*slot)

    table._write = slow_write  # type: ignore[method-assign,assignment]
    start.wait(10)
    slot = table.claim(os.getpid())
    start.wait(10)  # alive until all have claimed: an exited worker's slot is free again
    os._exit(100 if slot is None else slot)


def test_workers_claiming_at_once_each_get_their_own_slot() -> None:
    fork = multiprocessing.get_context("fork")
    workers = 6
    table = WorkerTable(workers)
    start = fork.Barrier(workers)
    claimers = [fork.Process(target=_claim_together, args=(table, start))
                for _ in range(workers)]
    for claimer in claimers:
        claimer.start()
    for claimer in claimers:
        claimer.join(20)
    exits = [-1 if claimer.exitcode is None else claimer.exitcode for claimer in claimers]
    assert sorted(exits) == list(range(workers))


_WITHOUT_DEV_SHM = """
import multiprocessing, os, sys
from api.connection_balance import WorkerTable
try:
    multiprocessing.get_context("fork").Array("q", 4)
except OSError:
    pass
else:
    sys.exit("multiprocessing's shared memory worked: /dev/shm was writable after all")
table = WorkerTable(2)
claimed, leave = os.pipe(), os.pipe()
child = os.fork()
if child == 0:
    table.publish(table.claim(os.getpid()), 5)
    os.write(claimed[1], b"x")
    os.read(leave[0], 1)
    os._exit(0)
os.read(claimed[0], 1)
mine = table.claim(os.getpid())
print(table.publish(mine, 2) if mine is not None else "no slot")
os.write(leave[1], b"x")
os.waitpid(child, 0)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting over /dev/shm needs root")
def test_the_table_needs_no_dev_shm_as_in_the_appliance_sandbox(tmp_path: Path) -> None:
    # The appliance's unit (PrivateDevices, PrivateUsers) leaves the service no writable
    # /dev/shm; there multiprocessing.Array failed with EACCES and the service did not start.
    script = tmp_path / "table.py"
    script.write_text(_WITHOUT_DEV_SHM)
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o ro tmpfs /dev/shm && exec "$0" "$1"',
         str(REPO / ".venv" / "bin" / "python"), str(script)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "7"  # the forked process's 5 and these 2


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _call(app: Any, client_port: int, http_version: str = "1.1") -> tuple[int, dict[bytes, bytes],
                                                                          bytes]:
    scope = {"type": "http", "http_version": http_version, "method": "GET", "path": "/",
             "headers": [], "client": ("127.0.0.1", client_port)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def _balancer_beside(other_holds: int) -> tuple[ConnectionBalancer, _Clock]:
    """This process's balancer in a table of two workers, the other of which (any live
    process will do for the table) holds `other_holds` connections; six connections of this
    worker have sent a request, answered as usual."""
    table = WorkerTable(2)
    other = table.claim(os.getppid())
    assert other is not None
    table.publish(other, other_holds)
    clock = _Clock()
    app = ConnectionBalancer(_hello, table, clock=clock)
    for port in range(50001, 50007):
        status, headers, body = _call(app, port)
        assert (status, body) == (200, b"hello") and b"connection" not in headers
    return app, clock


def test_a_crowded_worker_closes_its_excess_after_answering_and_only_over_http_1() -> None:
    app, clock = _balancer_beside(2)
    clock.now += connection_balance.REFRESH_SECONDS
    # 6 of 8: its share is 4, so the next two answers close their connections.
    answers = [_call(app, port) for port in (50001, 50002, 50003)]
    assert [headers.get(b"connection") for _, headers, _ in answers] == [b"close", b"close",
                                                                         None]
    assert all((status, body) == (200, b"hello") for status, _, body in answers)
    assert app.closed == 2
    # An HTTP/2 connection is never asked (no Connection header there), even when crowded.
    for port in range(50010, 50020):
        _call(app, port)
    clock.now += connection_balance.REFRESH_SECONDS
    status, headers, _ = _call(app, 50030, http_version="2")
    assert status == 200 and b"connection" not in headers
    assert _call(app, 50031)[1].get(b"connection") == b"close"


def test_connections_idle_for_the_window_no_longer_count() -> None:
    app, clock = _balancer_beside(3)
    clock.now += connection_balance.WINDOW_SECONDS + connection_balance.REFRESH_SECONDS
    # Only this one has been heard from within the window: 1 of 4, nothing to give up.
    assert b"connection" not in _call(app, 50001)[1]
    assert app.closed == 0


# -- the production server -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _held_by_worker(server_pid: int, port: int) -> list[int]:
    """Established connections to `port` held by each worker of the server, sorted."""
    ours: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rpartition(":")[2], 16) == port:
                    ours.add(int(fields[9]))
    workers = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    counts = []
    for pid in workers:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in ours:
                held += 1
        counts.append(held)
    return sorted(counts)


async def _keep_asking(port: int, connections: int, until: float,
                       statuses: Counter[int]) -> int:
    """Each connection asks /healthz again and again until `until`, opening a new connection
    when told to close (as an HTTP/1.1 client does); returns how many it reopened."""
    reopened = 0
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def client() -> None:
        nonlocal reopened
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < until:
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = int(head.split("content-length:")[1].split("\r\n")[0])
                await reader.readexactly(length)
                statuses[int(head.split()[1])] += 1
                if "connection: close" in head:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    reopened += 1
                await asyncio.sleep(0.005)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return reopened


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts connections in /proc")
def test_the_production_server_evens_out_keep_alive_connections(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(data_dir), "ENCLAVE_KEY_PASSPHRASE": "test horse",
                "ENCLAVE_WORKERS": "2", "NO_COLOR": "1"})
    subprocess.run([str(ENCLAVE), "init"], env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(ENCLAVE), "serve", "--port", str(port)], env=env,
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                if len(Path(f"/proc/{server.pid}/task/{server.pid}/children")
                       .read_text().split()) == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1)  # both workers' applications built
        statuses: Counter[int] = Counter()
        spreads = []

        async def run() -> int:
            until = time.monotonic() + 8
            asking = asyncio.ensure_future(_keep_asking(port, 20, until, statuses))
            while not asking.done():
                await asyncio.sleep(0.5)
                spreads.append(_held_by_worker(server.pid, port))
            return await asking

        reopened = asyncio.run(run())
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert set(statuses) == {200}, statuses  # every request answered, none refused
    settled = [spread for spread in spreads[-4:] if sum(spread) == 20]
    assert settled, spreads
    assert all(spread[1] - spread[0] <= 1 for spread in settled), (spreads, reopened)
    assert "Traceback" not in log.read_text()
