"""Deterministic cost of one trusted (compiled) read: Python opcodes executed per request.

The shared development machines are too noisy to see a 10-20% change in CPU time between two
runs; the number of Python bytecode instructions a request executes does not depend on the
load. This counts them (`sys.settrace` with opcode events, all threads) for the benchmark query
of `trusted_path.py`, sent by `documentId` through the whole ASGI app in-process, on a
PostgreSQL database filled as the benchmark fills it, and prints the total per request and the
share of each package. C work (AES-GCM, psycopg's row parsing, orjson) is not counted, so use
it to compare Python work between two versions of the code, next to `make bench-trusted`.

    .venv/bin/python bench/trusted_opcodes.py [--contacts 2000] [--requests 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for entry in (str(ROOT), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import contacts_read as base  # noqa: E402
import trusted_path  # noqa: E402


def _group(filename: str) -> str:
    """A package name for third-party code, the project's top-level folder for ours."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if filename.startswith("<"):
        return "generated code (SQLAlchemy, dataclasses)"
    try:
        return "enclave: " + Path(filename).resolve().relative_to(ROOT).parts[0]
    except ValueError:
        return "python stdlib and other"


class OpcodeCounter:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.functions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.active = False

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode" and self.active:
            code = frame.f_code
            self.counts[code.co_filename] += 1
            self.functions[(code.co_filename, code.co_qualname)] += 1
        return self.trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=3, help="requests counted")
    parser.add_argument("--warmup", type=int, default=30, help="requests before counting")
    parser.add_argument("--functions", type=int, default=0,
                        help="also list the N functions that execute the most opcodes")
    args = parser.parse_args(argv)

    from api.app import create_app
    from schema.runtime import Appliance

    workdir = Path(tempfile.mkdtemp(prefix="enclave-opcodes-"))
    with base.postgres_databases(1) as (url,):
        target = base.Target("guarded", workdir / "var", url)
        base.populate(target, args.contacts, 20, 7)
        documents = trusted_path.register_documents(target)
        appliance = Appliance.open(target.settings())
        try:
            app = create_app(appliance)
            token = asyncio.run(_token(app, target))
            body = json.dumps({"documentId": documents[trusted_path.QUERY]}).encode()
            counter = OpcodeCounter()
            threading.settrace(counter.trace)  # the request threads start during the warm-up
            # One event loop for warm-up and count, as in a server worker: the loop's own
            # database connections are opened during the warm-up, not counted.
            asyncio.run(_measured(app, token, body, args, counter))
            threading.settrace(None)  # type: ignore[arg-type]
        finally:
            appliance.close()
    groups: collections.Counter[str] = collections.Counter()
    for filename, count in counter.counts.items():
        if Path(filename).parent == BENCH:
            continue  # this harness: making requests and checking answers
        groups[_group(filename)] += count
    total = sum(groups.values()) / args.requests
    print(f"Python opcodes per trusted read (contacts(first: 50), {args.contacts} contacts): "
          f"{total:,.0f}")
    for name, count in groups.most_common(15):
        print(f"  {count / args.requests:10,.0f}  {name}")
    if args.functions:
        print("functions executing the most opcodes (own opcodes, not their callees'):")
        for (filename, name), count in counter.functions.most_common(args.functions):
            if Path(filename).parent != BENCH:
                print(f"  {count / args.requests:10,.0f}  {name} ({Path(filename).name})")
    return 0


async def _token(app: Any, target: base.Target) -> str:
    basic = base64.b64encode(f"{target.client_id}:{target.client_secret}".encode()).decode()
    status, answer = await _call(app, "/oauth/token", b"grant_type=client_credentials",
                                 [(b"authorization", f"Basic {basic}".encode()),
                                  (b"content-type", b"application/x-www-form-urlencoded")])
    if status != 200:
        raise SystemExit(f"token request failed: {status} {answer[:300]!r}")
    return str(json.loads(answer)["access_token"])


async def _measured(app: Any, token: str, body: bytes, args: argparse.Namespace,
                    counter: OpcodeCounter) -> None:
    await _requests(app, token, body, args.warmup)
    sys.settrace(counter.trace)
    counter.active = True
    try:
        await _requests(app, token, body, args.requests)
    finally:
        counter.active = False
        sys.settrace(None)


async def _requests(app: Any, token: str, body: bytes, count: int) -> None:
    headers = [(b"authorization", f"Bearer {token}".encode()),
               (b"content-type", b"application/json")]
    for _ in range(count):
        status, answer = await _call(app, "/graphql", body, headers)
        problem = trusted_path.check_read(answer, "trusted") if status == 200 else str(status)
        if problem is not None:
            raise SystemExit(f"unexpected answer: {problem}")


async def _call(app: Any, path: str, body: bytes,
                headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """One HTTP request through the ASGI app, as a server would hand it over."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()),
                         *headers]}
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])


if __name__ == "__main__":
    raise SystemExit(main())
