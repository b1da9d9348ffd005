"""
A real redis-server for the `pixelbyte_async.redis` tests, and their worker processes.

Import the fixtures you use into a test module (``from redis_fixture import
redis_server``); pytest finds them there.

* ``redis_server``: one server for the whole session (tests keep apart by
  ``key_prefix``), started as ``redis-server --port <free> --bind 127.0.0.1 --save ''
  --appendonly no`` in a temporary directory and stopped at the end.
* ``own_redis``: a server of the test's own, which it may stop and start again on
  the same port (`RedisServer.stop` / `RedisServer.start`).
* ``prefix``: a key prefix no other test uses.

Without ``redis-server`` (or redis-py) a test that needs one is skipped locally but
FAILS when ``$CI`` is set: CI must never pass by skipping the proof.

Run as a script, this module is a worker process of the multi-process tests (see
`main`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Self

import anyio
import pytest


HERE = Path(__file__).resolve()
SECRET = "whsec_hub_test"


def _need(what: str) -> None:
    message = f"{what} is needed for the Redis hub tests"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install it: see .ci/run)", pytrace=False)
    pytest.skip(message)


def require_redis() -> None:
    """Skip (locally) or fail (under CI) when redis-server or redis-py is missing."""
    if shutil.which("redis-server") is None:
        _need("redis-server")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        _need("redis-py (pip install 'redis>=5')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1, restartable on the same port."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        tls: Path | None = None,
        persist: bool = False,
        password: str | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.tls = tls  # a file with the certificate and key: listen with TLS only
        self.persist = persist  # an append-only file, fsynced every second
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        auth = "" if self.password is None else f":{self.password}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server; return once it says it accepts connections."""
        assert self.proc is None, "already running"
        proc = subprocess.Popen(  # noqa: S603 -- a fixed argv
            [
                shutil.which("redis-server") or "redis-server",
                *(
                    ["--port", str(self.port)]
                    if self.tls is None
                    else [
                        *("--port", "0", "--tls-port", str(self.port)),
                        *("--tls-cert-file", str(self.tls)),
                        *("--tls-key-file", str(self.tls)),
                        *("--tls-auth-clients", "no"),
                    ]
                ),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                *(["--requirepass", self.password] if self.password else []),
                "--dir",
                str(self.directory),
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while b"Ready to accept connections" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                self.stop()
                msg = f"redis-server did not start: {seen.decode(errors='replace')}"
                raise RuntimeError(msg)
            readable, _, _ = select.select([proc.stdout], [], [], left)
            if readable:
                seen += os.read(proc.stdout.fileno(), 65536)
        # Redis ignores SIGPIPE: with the pipe closed, its later log lines are lost,
        # and it can never block on a full pipe.
        proc.stdout.close()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM: it closes every client connection; or SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        """A plain redis-py client, to look at what the hub stored."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            yield client
        finally:
            await client.aclose()


@contextlib.contextmanager
def running_server(**options: Any) -> Iterator[RedisServer]:
    require_redis()
    with tempfile.TemporaryDirectory(prefix="pixelbyte-redis-") as tmp:
        server = RedisServer(Path(tmp), **options)
        server.start()
        try:
            yield server
        finally:
            server.stop()


_shared: list[Any] = []  # [server, context manager, users]


@pytest.fixture(name="redis_server", scope="session")
def redis_server_fixture() -> Iterator[RedisServer]:
    # Imported into several modules, this fixture has one definition per module:
    # they share one server, stopped when the last of them is torn down.
    if not _shared:
        context = running_server()
        _shared.extend([context.__enter__(), context, 0])
    _shared[2] += 1
    try:
        yield _shared[0]
    finally:
        _shared[2] -= 1
        if _shared[2] == 0:
            context = _shared[1]
            _shared.clear()
            context.__exit__(None, None, None)


@pytest.fixture(name="own_redis")
def own_redis_fixture() -> Iterator[RedisServer]:
    with running_server() as server:
        yield server


@pytest.fixture(name="persistent_redis")
def persistent_redis_fixture() -> Iterator[RedisServer]:
    """A server of the test's own that keeps its data across restarts (AOF)."""
    with running_server(persist=True) as server:
        yield server


class Proxy:
    """
    A TCP proxy to 127.0.0.1:*port* that can go silent: a partition.

    `freeze` stops forwarding in both directions without closing anything (packets
    dropped, no refusal); `thaw` forwards again.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def url(self, path: str = "/0") -> str:
        return f"redis://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self._open.wait()  # frozen: held, never delivered
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture(name="require_redis_always", autouse=True)
def require_redis_fixture() -> None:
    """Fail under CI, skip locally, when no redis-server can be started."""
    require_redis()


@pytest.fixture(name="hubs")
async def hubs_fixture(
    redis_server: RedisServer, prefix: str
) -> AsyncIterator[tuple[Any, Any]]:
    """Two hubs on one server and account: two processes, as far as Redis knows."""
    from pixelbyte_async.redis import RedisHub

    async with (
        RedisHub(redis_server.url, key_prefix=prefix) as a,
        RedisHub(redis_server.url, key_prefix=prefix) as b,
    ):
        yield a, b


@pytest.fixture(name="prefix")
def prefix_fixture() -> str:
    return "t" + uuid.uuid4().hex[:10]


# -- events ------------------------------------------------------------------------


def make_event(
    job_id: str,
    status: str = "completed",
    *,
    attempt: str | None = None,
    timestamp: int | None = None,
) -> Any:
    """A `WebhookEvent` made the way the receiver makes one: verify a signed body."""
    from pixelbyte_async.webhooks import signature_headers, verify

    body: dict[str, Any] = {"jobId": job_id, "requestId": "req_1", "status": status}
    if status == "completed":
        body["output"] = {"videoUrl": f"https://cdn.muvi.video/outputs/{job_id}.mp4"}
    elif status == "failed":
        body["error"] = {"code": "INTERNAL_ERROR", "message": "Model inference failed"}
    raw = json.dumps(body)
    headers = signature_headers(raw, SECRET, timestamp=timestamp)
    url = None if attempt is None else f"/hook?pb_attempt={attempt}"
    return verify(raw, headers, SECRET, url=url)


def decoded_jobs() -> int:
    """How many decoded jobs (`JobInfo`) are alive: what a remembered event costs."""
    import gc

    from pixelbyte_async._models import JobInfo

    gc.collect()
    # type() and not isinstance(): Django's lazy settings object would load itself.
    return sum(type(o) is JobInfo for o in gc.get_objects())


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
) -> None:
    """Check *condition* every 10 ms until it holds (at most *timeout* seconds)."""
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


# -- worker processes ----------------------------------------------------------------


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """Start this module as a worker process (stdout: one JSON/READY line each)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_line(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> str:
    """The next stdout line of *proc*; fail with its stderr if it ends instead."""
    assert proc.stdout is not None
    with anyio.fail_after(timeout):
        line = await proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        err = await proc.stderr.read()
        msg = f"worker ended (rc={await proc.wait()}): {err.decode(errors='replace')}"
        raise AssertionError(msg)
    return line.decode().strip()


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> Any:
    """The JSON result line of *proc*, once it exits with 0."""
    line = await read_line(proc, timeout)
    with anyio.fail_after(timeout):
        rc = await proc.wait()
    assert rc == 0, rc
    return json.loads(line)


def job_ids(spec: str) -> list[str]:
    start, _, stop = spec.partition(":")
    return [f"job-{i}" for i in range(int(start), int(stop))]


def _say(obj: object) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


async def _wait(ns: argparse.Namespace) -> None:
    from pixelbyte_async.redis import RedisHub

    async with RedisHub(ns.url, key_prefix=ns.prefix) as hub:
        assert hub.healthy
        ids = job_ids(ns.jobs)
        resolved: dict[str, float] = {}
        futures = {j: hub.future_for(j) for j in ids}
        for job_id, future in futures.items():
            future.add_done_callback(
                lambda _, j=job_id: resolved.setdefault(j, time.monotonic())
            )
        await hub.refresh()
        _say("READY")
        with anyio.fail_after(ns.timeout):
            events = await asyncio.gather(*futures.values())
        for job_id in ids:
            hub.release(job_id)
        _say(
            {
                "statuses": {e.job_id: e.status.value for e in events},
                "attempts": {e.job_id: e.attempt for e in events},
                "resolved_at": resolved,
                "stats": hub.stats,
                "waiting": hub.waiting,
            }
        )


async def _publish(ns: argparse.Namespace) -> None:
    from pixelbyte_async.redis import RedisHub

    ids = job_ids(ns.jobs)
    events = [
        make_event(j, "failed" if i % 5 == 0 else "completed", attempt=f"a{j}")
        for i, j in enumerate(ids)
    ]
    sent_at: dict[str, float] = {}
    answers: list[bool] = []
    async with RedisHub(ns.url, key_prefix=ns.prefix) as hub:
        assert hub.healthy
        for _ in range(ns.rounds):
            for event in events:
                sent_at.setdefault(event.job_id, time.monotonic())
                answers.append(await hub.publish(event))
    _say(
        {"first": answers.count(True), "dup": answers.count(False), "sent_at": sent_at}
    )


async def _slots(ns: argparse.Namespace) -> None:
    from pixelbyte_async.redis import RedisHub

    max_seen = 0
    acquired = 0
    async with RedisHub(ns.url, key_prefix=ns.prefix) as hub:
        slots = hub.slots(ns.limit, lease=ns.lease, retry_interval=0.05)
        _say("READY")

        async def worker() -> None:
            nonlocal max_seen, acquired
            for _ in range(ns.rounds):
                lease = await slots.acquire(timeout=ns.timeout)
                acquired += 1
                for _ in range(3):  # "work": a few round trips while holding it
                    max_seen = max(max_seen, await slots.in_use())
                await slots.release(lease)

        async with anyio.create_task_group() as tg:
            for _ in range(ns.concurrency):
                tg.start_soon(worker)
        _say({"max_seen": max_seen, "peak": slots.peak, "acquired": acquired})


async def _hold(ns: argparse.Namespace) -> None:
    from pixelbyte_async.redis import RedisHub

    async with RedisHub(ns.url, key_prefix=ns.prefix) as hub:
        slots = hub.slots(ns.limit, lease=ns.lease, settle=ns.settle)
        leases = [await slots.acquire(timeout=ns.timeout) for _ in range(ns.count)]
        # The first --bind leases are bound to the jobs job-0, job-1 ...
        for n, lease in enumerate(leases[: ns.bind]):
            slots.bind(lease, f"job-{n}")
        await slots.renew(leases[0])  # the bindings are in Redis now
        _say({"leases": leases})
        await asyncio.Event().wait()  # until killed


def main(argv: list[str] | None = None) -> None:
    """Worker modes: ``wait``, ``publish``, ``slots`` and ``hold`` (see the tests)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["wait", "publish", "slots", "hold"])
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--jobs", default="0:10")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=300.0)
    parser.add_argument("--bind", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    ns = parser.parse_args(argv)
    run = {"wait": _wait, "publish": _publish, "slots": _slots, "hold": _hold}
    asyncio.run(run[ns.mode](ns))


if __name__ == "__main__":
    main()
