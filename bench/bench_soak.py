"""
Soak: one long-lived client, many finished jobs; is anything kept per finished job?

Issue 15 ("Runs for months: nothing kept per finished job").  One `PixelByte` runs
``--jobs`` jobs (default 100,000) in rounds of ``--round`` (default 2,000): each round
gathers that many submit-and-wait calls, waits for all of them and collects garbage.
Two modes, one after the other, each with a fresh client and a fresh fake:

* ``polling``: adaptive polling (`Job.wait` with the default policy);
* ``webhook``: a `WebhookServer` in this process receives the fake's signed
  deliveries (``PixelByte(webhook=server)``; safety GET ``--webhook-grace`` after
  the ETA, since the fake sends a round's deliveries one at a time).

The fake runs in its own process (this script with ``--serve-fake``, pinned to its
own core, the client on the others) on a virtual clock shared through
``CLOCK_MONOTONIC`` (`VirtualClock.share` / `VirtualClock.from_shared`),
``--time-scale`` virtual seconds per real second, so the figures are the client's
alone and the claim window (``claim_window``, one hour by default, pruned by the
client's clock) and the receiver's retention (30 min) really pass.  The fake forgets
its own finished jobs and request records after ``--fake-keep`` virtual seconds, so
that its linear scans stay short.

After every round (after ``gc.collect()``): RSS (``VmRSS``, after glibc's
``malloc_trim(0)``, so memory in use rather than the allocator's high-water mark;
the untrimmed figure is kept too), the bytes tracemalloc
traces (started after round 1; the rows are kept in a file, and no snapshot is
taken between rounds: its transient objects would fragment the heap and show in the
RSS), gc-tracked objects, the sizes of the client's and the receiver's
per-job structures, the event-loop lag p99 of a 10 ms ticker during the round (with
tracemalloc on, which slows every allocation: round 1 is the untraced reference),
and the cost of one ``pb.reconcile(...)`` that finds nothing (an attempt begun an
hour ago, of a model this run never submits: one list request; median of 5).

**Warm-up** lasts until a round *starts* one claim window (and, with webhooks, the
receiver's retention) of virtual time after round 1 ended: by then everything made
before tracing began has been pruned, and the windows are full.

What the windows hold when a round ends varies (a window may hold one round more),
so the figures per finished job are fitted over the rounds after warm-up:
``traced = c0 + c_job * jobs_done + c_claim * claims [+ c_event * receiver events]``
(and the same for gc objects and RSS): ``c_job`` is what is kept per
finished job, ``c_claim`` and ``c_event`` what a remembered claim or delivery costs.
The raw figure (growth between tracemalloc snapshots at the end of warm-up and at
the end, this script's and tracemalloc's own allocations left out, / jobs since
warm-up) is reported too, with the blocks, and the top growth lines by traceback.

Targets: retained per finished job ≈ 0 (c_job, and the raw figure less what the
windows held more at the end and less one-off table resizes, both <= 10 B; before
the fix 0.2 KiB), RSS flat within 1 MiB after warm-up (trend between the medians of
the first and last third of rounds, less what the windows held); reconcile cost
(client CPU) last round / first traced round <= 1.5; loop lag p99 reported.

Writes bench/results/soak.json.

    python bench/bench_soak.py [--jobs 100000] [--round 2000] [--time-scale 100]
                               [--modes polling,webhook] [--frames 1]

``--frames 0`` runs without tracemalloc: loop lag, RSS and reconcile cost as a user
would see them (tracemalloc roughly triples the client's CPU per job).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import hashlib
import json
import linecache
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pixelbyte_async
from _pinning import cpus, pin_client, pin_to_last_cpu
from pixelbyte_async import (
    AmbiguousSubmitError,
    Job,
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
    PollPolicy,
    VirtualClock,
)
from pixelbyte_async._reconcile import DEFAULT_CLAIM_WINDOW
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import WebhookServer


#: A model this run never submits: the reconcile probe's list request finds nothing.
PROBE_MODEL = "test/echo-image/text-to-image"
PROBES_PER_ROUND = 5
OLD_LEAK_BYTES_PER_JOB = 0.2 * 1024
TARGET_BYTES_PER_JOB = 10.0
TARGET_RSS_KIB = 1024
TARGET_RECONCILE_RATIO = 1.5


# -- the fake's process -------------------------------------------------------------------


def _trim_fake(fake: FakePixelByte, keep: float) -> int:
    """Forget finished, delivered jobs created more than *keep* virtual seconds ago."""
    state = fake._state  # noqa: SLF001 -- the bench's own fake process
    sender = fake._webhooks  # noqa: SLF001
    horizon = state.now() - keep
    now = state.now()
    old: list[str] = []
    for job in state.jobs.values():  # insertion order = creation order
        if job.created_at >= horizon:
            break
        if job.status_at(now) not in {"completed", "failed", "cancelled"}:
            break
        if job.id in state.awaiting_webhook:
            break
        old.append(job.id)
    for job_id in old:
        del state.jobs[job_id]
        state.live.pop(job_id, None)
        sender.attempts.pop(job_id, None)
        sender.next_at.pop(job_id, None)
    # Records only: nothing reads them in this process.
    state.requests.clear()
    state.cdn_requests.clear()
    state.webhook_deliveries.clear()
    state.ledger_entries.clear()
    return len(old)


async def serve_fake(shared_clock: str, keep: float) -> None:
    """Run the fake on the shared virtual clock until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with FakePixelByte(
        clock=VirtualClock.from_shared(shared_clock),
        allow_http_webhooks=True,
        auto_webhooks=True,
    ) as fake:
        sys.stdout.write(
            f"PIXELBYTE_BASE_URL={fake.url}\nPIXELBYTE_API_KEY={fake.api_key}\n"
            f"PIXELBYTE_WEBHOOK_SECRET={fake.webhook_secret}\n"
        )
        sys.stdout.flush()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            _trim_fake(fake, keep)


@contextlib.asynccontextmanager
async def fake_process(shared_clock: str, keep: float) -> AsyncIterator[dict[str, str]]:
    """Start this script as the fake (``--serve-fake``) and yield what it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-fake",
        shared_clock,
        "--fake-keep",
        str(keep),
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=pin_to_last_cpu,
    )
    wanted = {"PIXELBYTE_BASE_URL", "PIXELBYTE_API_KEY", "PIXELBYTE_WEBHOOK_SECRET"}
    try:
        found: dict[str, str] = {}
        assert proc.stdout is not None
        while len(found) < len(wanted):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if not line:
                raise RuntimeError("fake server process exited")
            key, _, value = line.strip().partition("=")
            if key in wanted:
                found[key] = value
        yield found
    finally:
        proc.terminate()
        await proc.wait()


# -- measurements --------------------------------------------------------------------------


def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def trimmed_rss_kib() -> int:
    """
    RSS after ``malloc_trim(0)`` (glibc): memory in use, not the high-water mark.

    Without it, one large transient (a tracemalloc snapshot, a round that peaks
    higher) leaves free heap in the RSS for good, which hides later growth below it.
    """
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    return rss_kib()


def rss_kib() -> int:
    """Current resident set size in KiB (Linux /proc)."""
    with open("/proc/self/status") as fh:  # noqa: PTH123 -- tiny synchronous read
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class LagTicker:
    """Event-loop lag from a 10 ms ticker, and full collections, while a round runs."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.full_gcs: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info["generation"] == 2:
            self.full_gcs.append((time.perf_counter() - self._gc_started) * 1000)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            self.lags.append((loop.time() - before - 0.01) * 1000)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.ensure_future(self._tick())

    async def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._task is not None:
            await self._task
        gc.callbacks.remove(self._on_gc)
        lags = sorted(self.lags) or [0.0]
        return {
            "lag_ms_p50": round(lags[len(lags) // 2], 2),
            "lag_ms_p99": round(lags[int(0.99 * (len(lags) - 1))], 2),
            "lag_ms_max": round(lags[-1], 2),
            "full_gcs": len(self.full_gcs),
            "full_gc_ms_max": round(max(self.full_gcs, default=0.0), 1),
        }


class RequestCounter:
    """Count the client's requests at its transport (retries included)."""

    def __init__(self, pb: PixelByte) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        transport = pb._transport  # noqa: SLF001 -- measuring, not changing
        send = transport.send
        counts = self.counts

        async def counted(request: Any) -> Any:
            path = request.url.split("/v1/", 1)[-1]
            if request.method == "POST":
                counts["submit" if path.startswith("jobs/submit") else "post"] += 1
            elif path.split("?", 1)[0] == "jobs":
                counts["list"] += 1
            elif path.startswith("jobs/"):
                counts["get"] += 1
            else:
                counts["other"] += 1
            return await send(request)

        transport.send = counted  # type: ignore[method-assign]


def kling(i: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", prompt=f"p{i}"
    )


async def run_one(
    pb: PixelByte, model_input: KlingO1StartEndFrame, submitted: list[float]
) -> Job:
    """`PixelByte.run`, noting when the submit returned (virtual time)."""
    job = await pb.submit(model_input)
    submitted.append(pb.clock.time())
    return await job.wait()


def structure_sizes(pb: PixelByte, server: WebhookServer | None) -> dict[str, int]:
    reconciler = pb._reconciler  # noqa: SLF001 -- the structures under test
    slots = pb._slots  # noqa: SLF001
    sizes = {
        "slots_jobs": len(slots.jobs),
        "slots_used": slots.used,
        "claims": len(reconciler.claims),
        "unresolved": len(reconciler.unresolved),
        "in_flight": len(reconciler.in_flight),
    }
    if server is not None:
        receiver = server.receiver._sizes()  # noqa: SLF001
        sizes.update({f"rx_{k}": v for k, v in receiver.items()})
    return sizes


async def reconcile_probe(
    pb: PixelByte, clock: VirtualClock, counter: RequestCounter
) -> dict[str, float]:
    """Median cost of a reconcile that finds nothing (an attempt begun an hour ago)."""
    walls: list[float] = []
    cpus: list[float] = []
    lists_before = counter.counts["list"]
    for _ in range(PROBES_PER_ROUND):
        error = AmbiguousSubmitError(
            "soak probe",
            model=PROBE_MODEL,
            input={"prompt": "probe"},
            webhook_url=None,
            started_at=clock.time() - 3600,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        found = await pb.reconcile(error)
        cpus.append((time.process_time() - cpu) * 1000)
        walls.append((time.perf_counter() - wall) * 1000)
        assert found is None
    return {
        "reconcile_wall_ms": round(statistics.median(walls), 3),
        "reconcile_cpu_ms": round(statistics.median(cpus), 3),
        "reconcile_lists": (counter.counts["list"] - lists_before) / PROBES_PER_ROUND,
    }


def _short(filename: str) -> str:
    """A path short enough to read: from the package or the stdlib module on."""
    for marker in ("site-packages/", "/pixelbyte_async/", "/python3.11/", "/bench/"):
        if marker in filename:
            return marker.strip("/") + "/" + filename.split(marker, 1)[1]
    return filename


def top_growth(
    base: tracemalloc.Snapshot, final: tracemalloc.Snapshot, n: int
) -> tuple[list[dict[str, Any]], int]:
    """
    The *n* tracebacks whose retained bytes changed most between the snapshots.

    Also returns the bytes of tracebacks whose number of blocks did not change but
    whose size did: hash tables and sets that were resized (a one-off step between
    two capacities, not growth per job).
    """
    diffs = final.compare_to(base, "traceback")
    resized = sum(stat.size_diff for stat in diffs if stat.count_diff == 0)
    rows = []
    for stat in diffs[:n]:
        frames = [
            f"{_short(f.filename)}:{f.lineno} {linecache.getline(f.filename, f.lineno).strip()}"
            for f in stat.traceback
        ]
        rows.append(
            {
                "size_diff_kib": round(stat.size_diff / 1024, 1),
                "count_diff": stat.count_diff,
                "size_kib": round(stat.size / 1024, 1),
                "traceback_innermost_first": frames[::-1],
            }
        )
    return rows, resized


# -- one mode -------------------------------------------------------------------------------


def _ignore_own(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Leave out tracemalloc's own blocks and this script's records."""
    return snapshot.filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),  # noqa: FBT003 -- tracemalloc's API
            tracemalloc.Filter(False, __file__),  # noqa: FBT003
        ]
    )


def _total(snapshot: tracemalloc.Snapshot) -> tuple[int, int]:
    """Bytes and blocks traced."""
    stats = snapshot.statistics("filename")
    return sum(stat.size for stat in stats), sum(stat.count for stat in stats)


async def soak(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    clock = VirtualClock(time_scale=args.time_scale)
    window = args.claim_window or DEFAULT_CLAIM_WINDOW
    period = args.period
    rounds = math.ceil(args.jobs / args.round)
    rows_file = Path(tempfile.gettempdir()) / f"soak-{os.getpid()}-{mode}.rows"
    rows_out = rows_file.open("w")
    base: dict[str, Any] | None = None
    end: dict[str, Any] = {}
    top: list[dict[str, Any]] = []
    async with fake_process(clock.share(), args.fake_keep) as env:
        server: WebhookServer | None = None
        poll: PollPolicy | None = None
        if mode == "webhook":
            options: dict[str, Any] = {}
            if args.retention:
                options["retention"] = args.retention
            server = WebhookServer(
                env["PIXELBYTE_WEBHOOK_SECRET"], clock=clock, **options
            )
            # The fake sends its deliveries one at a time: give a round's burst
            # time to arrive before the one safety GET (GETs are counted).
            poll = PollPolicy(webhook_grace=args.webhook_grace)
        async with PixelByte(
            api_key=env["PIXELBYTE_API_KEY"],
            base_url=env["PIXELBYTE_BASE_URL"],
            clock=clock,
            max_concurrent_jobs=None,
            webhook=server,
            poll=poll,
            claim_window=args.claim_window,
        ) as pb:
            counter = RequestCounter(pb)
            # What must pass before the windows hold only rounds run since round 1.
            span = max(window, server.receiver.retention if server else 0.0)
            started_virtual = clock.time()
            started_real = time.perf_counter()
            # Virtual time at the end of round 1, when tracemalloc starts.
            measured_from: float | None = None
            base_file = Path(tempfile.gettempdir()) / f"soak-{os.getpid()}-{mode}.tm"
            done_jobs = 0
            for r in range(rounds):
                size = min(args.round, args.jobs - done_jobs)
                # With --period, rounds start every *period* virtual seconds.
                late = clock.time() - (started_virtual + r * period)
                if period and late < 0:
                    await clock.sleep(-late)
                round_start_v = clock.time()
                # Warm-up: until a round starts a full window after round 1.
                warm = base is None and (
                    measured_from is None or round_start_v < measured_from + span
                )
                requests_before = collections.Counter(counter.counts)
                inputs = [kling(done_jobs + i) for i in range(size)]
                ticker = LagTicker()
                ticker.start()
                real0 = time.perf_counter()
                cpu0 = time.process_time()
                submitted: list[float] = []
                results = await asyncio.gather(
                    *(run_one(pb, x, submitted) for x in inputs),
                    return_exceptions=True,
                )
                cpu = time.process_time() - cpu0
                real = time.perf_counter() - real0
                lag = await ticker.stop()
                completed = sum(
                    1
                    for j in results
                    if not isinstance(j, BaseException)
                    and j.status is JobStatus.COMPLETED
                )
                errors = collections.Counter(
                    type(j).__name__ for j in results if isinstance(j, BaseException)
                )
                burst = max(submitted, default=round_start_v) - round_start_v
                del results, inputs, submitted
                done_jobs += size
                gc.collect()
                new = counter.counts - requests_before
                row: dict[str, Any] = {
                    "round": r + 1,
                    "jobs_done": done_jobs,
                    "completed": completed,
                    "errors": dict(errors),
                    "warm_up": warm,
                    "started_late_s": round(max(late, 0.0), 1) if period else None,
                    "submit_burst_virtual_s": round(burst, 1),
                    "traced": tracemalloc.is_tracing(),
                    "virtual_s": round(clock.time() - started_virtual),
                    "round_virtual_s": round(clock.time() - round_start_v, 1),
                    "round_real_s": round(real, 2),
                    "round_cpu_s": round(cpu, 2),
                    "rss_mib_untrimmed": round(rss_kib() / 1024, 2),
                    "rss_mib": round(trimmed_rss_kib() / 1024, 2),
                    "traced_kib": None,
                    "traced_bytes": None,
                    "gc_objects": len(gc.get_objects()),
                    **structure_sizes(pb, server),
                    **lag,
                    "gets_per_job": round(new["get"] / size, 2),
                    "submits_per_job": round(new["submit"] / size, 2),
                }
                if tracemalloc.is_tracing():
                    # No snapshot here: its hundreds of thousands of transient
                    # objects would fragment the heap and show up in the RSS.
                    traced = tracemalloc.get_traced_memory()[0]
                    row["traced_kib"] = round(traced / 1024, 1)
                    row["traced_bytes"] = traced
                row.update(await reconcile_probe(pb, clock, counter))
                if measured_from is None:
                    # After round 1 imports, pools and caches are warm.
                    if args.frames > 0:
                        tracemalloc.start(args.frames)
                    measured_from = clock.time()
                elif base is None and not warm:
                    # The end of warm-up: the baselines.  The snapshot goes to a
                    # file so that it does not sit in the RSS measured from here.
                    base = {"round": r + 1, "jobs_done": done_jobs}
                    base["virtual_s"] = row["virtual_s"]
                    if tracemalloc.is_tracing():
                        snapshot = _ignore_own(tracemalloc.take_snapshot())
                        base["traced_bytes"], base["traced_blocks"] = _total(snapshot)
                        snapshot.dump(base_file)
                        del snapshot
                    gc.collect()
                    base["rss_kib"] = trimmed_rss_kib()
                    base["gc_objects"] = len(gc.get_objects())
                    row["baseline"] = True
                # Rows wait in a file, so that they are not retained memory.
                rows_out.write(json.dumps(row) + "\n")
                rows_out.flush()
                print(
                    f"  {mode} r{r + 1:>3} jobs {done_jobs:>6} "
                    f"{'warm ' if warm else '     '}"
                    f"v {row['virtual_s']:>6}s burst {row['submit_burst_virtual_s']:5.0f}s real {real:5.1f}s cpu {cpu:4.1f}s "
                    f"rss {row['rss_mib']:7.2f} ({row['rss_mib_untrimmed']:.2f}) "
                    f"traced {row['traced_kib'] or 0:8.1f}K objs {row['gc_objects']:>7} "
                    f"claims {row['claims']:>6} slots {row['slots_jobs']} "
                    + (
                        f"rx ev {row['rx_events']} att {row['rx_attempts']} "
                        f"fut {row['rx_futures']} w {row['rx_waiters']} "
                        if server is not None
                        else ""
                    )
                    + f"lag99 {lag['lag_ms_p99']:.1f}ms gets/job {row['gets_per_job']} "
                    f"rec {row['reconcile_cpu_ms']:.2f}ms",
                    flush=True,
                )
            end["wall_s"] = time.perf_counter() - started_real
            end["virtual_s"] = clock.time() - started_virtual
            gc.collect()
            end["rss_kib"] = trimmed_rss_kib()
            end["gc_objects"] = len(gc.get_objects())
            if tracemalloc.is_tracing():
                if base is not None and "traced_bytes" in base:
                    final = _ignore_own(tracemalloc.take_snapshot())
                    end["traced_bytes"], end["traced_blocks"] = _total(final)
                    before = tracemalloc.Snapshot.load(str(base_file))
                    top, end["resized_bytes"] = top_growth(before, final, args.top)
                    del before, final
                tracemalloc.stop()
            base_file.unlink(missing_ok=True)
    rows_out.close()
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    rows_file.unlink()
    summary = summarise(rows, base, end)
    summary.update(
        {
            "mode": mode,
            "jobs": args.jobs,
            "round_size": args.round,
            "rounds": rounds,
            "time_scale": args.time_scale,
            "tracemalloc_frames": args.frames,
            "period_s": period,
            "rounds_started_late": sum(1 for r in rows[1:] if r["started_late_s"] > 0)
            if period
            else None,
            "claim_window_s": window,
            "receiver_retention_s": server.receiver.retention if server else None,
            "webhook_grace_s": args.webhook_grace if server else None,
            "virtual_s_total": round(end["virtual_s"]),
            "virtual_h_total": round(end["virtual_s"] / 3600, 2),
            "wall_s": round(end["wall_s"], 1),
        }
    )
    return {"summary": summary, "top_growth": top, "rows": rows}


_STRUCTURES = (
    "slots_jobs",
    "slots_used",
    "claims",
    "unresolved",
    "in_flight",
    "rx_events",
    "rx_attempts",
    "rx_futures",
    "rx_waiters",
    "rx_hook_tasks",
)


def fit(
    rows: list[dict[str, Any]], target: str, predictors: tuple[str, ...]
) -> dict[str, float] | None:
    """
    Least squares: *target* = c0 + sum(c_p * p) over *rows*, with the standard errors.

    Predictors that do not vary are left out (their effect is in c0), as is the
    last one while the system stays singular.
    """
    use = [p for p in predictors if len({r[p] for r in rows}) > 1]
    while True:
        k = len(use)
        if len(rows) <= k + 1:
            return None
        means = {p: statistics.fmean(r[p] for r in rows) for p in use}
        ybar = statistics.fmean(r[target] for r in rows)
        xs = [[r[p] - means[p] for p in use] for r in rows]
        ys = [r[target] - ybar for r in rows]
        # Gauss-Jordan on [X'X | I] gives the inverse, for the coefficients and
        # their standard errors.
        a = [
            [sum(x[i] * x[j] for x in xs) for j in range(k)]
            + [1.0 if i == j else 0.0 for j in range(k)]
            for i in range(k)
        ]
        singular = False
        for col in range(k):
            pivot = max(range(col, k), key=lambda i: abs(a[i][col]))
            if abs(a[pivot][col]) < 1e-9 * max(1.0, abs(a[col][col])):
                singular = True
                break
            a[col], a[pivot] = a[pivot], a[col]
            scale = a[col][col]
            a[col] = [v / scale for v in a[col]]
            for i in range(k):
                if i != col and a[i][col]:
                    factor = a[i][col]
                    a[i] = [v - factor * w for v, w in zip(a[i], a[col], strict=True)]
        if singular:
            use = use[:-1]
            continue
        inverse = [row[k:] for row in a]
        xty = [sum(x[i] * y for x, y in zip(xs, ys, strict=True)) for i in range(k)]
        coef = [sum(inverse[i][j] * xty[j] for j in range(k)) for i in range(k)]
        residual = [
            y - sum(c * v for c, v in zip(coef, x, strict=True))
            for x, y in zip(xs, ys, strict=True)
        ]
        sigma2 = sum(e * e for e in residual) / (len(rows) - k - 1)
        out: dict[str, float] = {}
        for i, p in enumerate(use):
            out[p] = coef[i]
            out[p + "_se"] = math.sqrt(max(sigma2 * inverse[i][i], 0.0))
        out["residual_sd"] = math.sqrt(sigma2)
        return out


def summarise(
    rows: list[dict[str, Any]], base: dict[str, Any] | None, end: dict[str, Any]
) -> dict[str, Any]:
    last = rows[-1]
    # Compare reconcile under the same conditions: tracemalloc slows every
    # allocation, so "first" is the first traced round when tracing.
    same = [r for r in rows if r["traced"] == last["traced"]]
    first = same[0]
    measured = [r for r in rows if r["round"] > (base or {"round": 0})["round"]]
    out: dict[str, Any] = {
        "completed": sum(r["completed"] for r in rows),
        "errors": sum(sum(r["errors"].values()) for r in rows),
        "gets_per_job": round(statistics.fmean(r["gets_per_job"] for r in rows), 2),
        "lag_ms_p99_round_1_untraced": rows[0]["lag_ms_p99"],
        "lag_ms_p99_median": statistics.median(r["lag_ms_p99"] for r in rows),
        "lag_ms_p99_max": max(r["lag_ms_p99"] for r in rows),
        "reconcile_first_round": first["round"],
        "reconcile_cpu_ms_round_1": rows[0]["reconcile_cpu_ms"],
        "reconcile_cpu_ms_first": first["reconcile_cpu_ms"],
        "reconcile_cpu_ms_last": last["reconcile_cpu_ms"],
        "reconcile_cpu_ratio": round(
            last["reconcile_cpu_ms"] / max(first["reconcile_cpu_ms"], 1e-6), 2
        ),
        "reconcile_wall_ms_first": first["reconcile_wall_ms"],
        "reconcile_wall_ms_last": last["reconcile_wall_ms"],
        "reconcile_wall_ratio": round(
            last["reconcile_wall_ms"] / max(first["reconcile_wall_ms"], 1e-6), 2
        ),
        "reconcile_lists_per_call": last["reconcile_lists"],
        "warm_up_reached": base is not None and len(measured) >= 3,
        "structures_end": {k: last[k] for k in _STRUCTURES if k in last},
        "structures_max_after_warm_up": {
            k: max(r[k] for r in measured) for k in _STRUCTURES if k in last
        }
        if measured
        else None,
    }
    if base is None or len(measured) < 3:
        return out
    jobs = last["jobs_done"] - base["jobs_done"]
    predictors = ("jobs_done", "claims") + (
        ("rx_events",) if "rx_events" in last else ()
    )
    for r in measured:
        r_kib = r["rss_mib"] * 1024
        r["rss_kib"] = r_kib
    fits = {
        "traced_bytes": fit(measured, "traced_bytes", predictors)
        if measured[0]["traced_bytes"] is not None
        else None,
        "gc_objects": fit(measured, "gc_objects", predictors),
        "rss_kib": fit(measured, "rss_kib", predictors),
    }
    for r in measured:
        del r["rss_kib"]
    # RSS less what the windows held at that moment (bytes per entry from the
    # tracemalloc fit), then the medians of the first and last third of rounds: a
    # trend, not the allocator's swings or a window holding one round more.
    per_entry = fits["traced_bytes"] or {}
    adjusted = [
        r["rss_mib"] * 1024
        - sum(per_entry.get(p, 0.0) * r[p] for p in predictors[1:]) / 1024
        for r in measured
    ]
    third = max(1, len(adjusted) // 3)
    trend = statistics.median(adjusted[-third:]) - statistics.median(adjusted[:third])
    rss = [r["rss_mib"] for r in measured]
    out.update(
        {
            "warm_up_rounds": base["round"],
            "warm_up_virtual_s": base["virtual_s"],
            "jobs_after_warm_up": jobs,
            "rss_mib_at_warm_up": round(base["rss_kib"] / 1024, 2),
            "rss_mib_end": round(end["rss_kib"] / 1024, 2),
            "rss_growth_kib": end["rss_kib"] - base["rss_kib"],
            "rss_mib_range_after": [min(rss), max(rss)],
            "rss_trend_kib_windows_adjusted": round(trend),
            "gc_objects_at_warm_up": base["gc_objects"],
            "gc_objects_end": end["gc_objects"],
            "fits": {
                k: None if v is None else {p: round(c, 4) for p, c in v.items()}
                for k, v in fits.items()
            },
        }
    )
    if "traced_bytes" in base and "traced_bytes" in end and jobs:
        growth = end["traced_bytes"] - base["traced_bytes"]
        blocks = end["traced_blocks"] - base["traced_blocks"]
        # What the windows held more (or less) at the end than at warm-up, at the
        # fitted cost per entry, and one-off resizes of tables, taken out.
        at_base = next(r for r in rows if r["round"] == base["round"])
        held = sum(
            per_entry.get(p, 0.0) * (last[p] - at_base[p]) for p in predictors[1:]
        )
        adjusted_growth = growth - held - end["resized_bytes"]
        out.update(
            {
                "traced_kib_at_warm_up": round(base["traced_bytes"] / 1024, 1),
                "traced_kib_end": round(end["traced_bytes"] / 1024, 1),
                "traced_growth_kib": round(growth / 1024, 1),
                # The brief's raw figure: it also moves with what the windows
                # happen to hold at the two moments (see the fits).
                "retained_bytes_per_job_raw": round(growth / jobs, 2),
                "retained_blocks_per_job_raw": round(blocks / jobs, 4),
                "resized_tables_kib": round(end["resized_bytes"] / 1024, 1),
                "windows_held_more_kib": round(held / 1024, 1),
                "retained_bytes_per_job_adjusted": round(adjusted_growth / jobs, 2),
            }
        )
    return out


def verdicts(summary: dict[str, Any]) -> dict[str, bool | None]:
    """
    The goals.

    Retained per finished job: the fitted figure and the raw one (less what the
    windows held more or less at the end than at warm-up, and less one-off table
    resizes) both within 10 B/job.  RSS: the trend between the first and the last
    third of the rounds after warm-up, less what the windows held, within 1 MiB.
    """
    fitted = ((summary.get("fits") or {}).get("traced_bytes") or {}).get("jobs_done")
    raw = summary.get("retained_bytes_per_job_adjusted")
    trend = summary.get("rss_trend_kib_windows_adjusted")
    return {
        "all_completed": summary["errors"] == 0
        and summary["completed"] == summary["jobs"],
        "retained_per_job_about_zero": None
        if fitted is None or raw is None
        else max(abs(fitted), abs(raw)) <= TARGET_BYTES_PER_JOB,
        "rss_flat_within_1_mib": None
        if trend is None
        else abs(trend) <= TARGET_RSS_KIB,
        "reconcile_cost_flat": summary["reconcile_cpu_ratio"] <= TARGET_RECONCILE_RATIO,
    }


def source_fingerprint() -> dict[str, Any]:
    """Which code was measured: HEAD, and a hash of the package's files as they are."""
    package = Path(pixelbyte_async.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        digest.update(path.read_bytes())
        # Growth lines are shown with the source as it was when the run began,
        # even if somebody edits the file meanwhile.
        linecache.getlines(str(path))
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 -- the repository's git
        capture_output=True,
        text=True,
        check=False,
        cwd=package.parent,
    ).stdout.strip()
    changed = subprocess.run(  # noqa: S603 -- fixed arguments
        ["git", "status", "--porcelain", "--", package.name],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        cwd=package.parent,
    ).stdout.splitlines()
    return {
        "head": head,
        "package_files_changed_since_head": len(changed),
        "package_sha256": digest.hexdigest()[:16],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "source": source_fingerprint(),
        "python": sys.version.split()[0],
        "cpus": len(cpus()) or os.cpu_count(),
        "command": "python bench/bench_soak.py " + " ".join(sys.argv[1:]),
        "before_fix": {
            "jobs": 20_000,
            "rss_mib": [49.5, 53.5],
            "retained_bytes_per_job": OLD_LEAK_BYTES_PER_JOB,
        },
        "modes": {},
    }
    for mode in args.modes.split(","):
        print(f"{mode}: {args.jobs} jobs in rounds of {args.round}", flush=True)
        res = await soak(mode, args)
        res["verdicts"] = verdicts(res["summary"])
        out["modes"][mode] = res
        gc.collect()
    return out


def report(res: dict[str, Any]) -> bool:
    ok = True
    for mode, m in res["modes"].items():
        s, v = m["summary"], m["verdicts"]
        print(
            f"\n{mode}: {s['completed']}/{s['jobs']} completed, {s['errors']} errors, "
            f"{s['virtual_h_total']} h virtual in {s['wall_s']} s "
            f"(x{s['time_scale']:g}, tracemalloc {s['tracemalloc_frames']} frames); "
            f"GETs/job {s['gets_per_job']}; "
            + (
                f"a round every {s['period_s']:g} s virtual, "
                f"{s['rounds_started_late']} started late"
                if s["period_s"]
                else "rounds back to back"
            )
        )
        if s["warm_up_reached"]:
            print(
                f"  warm-up: {s['warm_up_rounds']} rounds, {s['warm_up_virtual_s']} s "
                f"virtual (up to the first round to start a claim window, "
                f"{s['claim_window_s']:g} s, and the receiver's retention after "
                f"round 1); then "
                f"{s['jobs_after_warm_up']} jobs"
            )
            fits = s.get("fits") or {}

            def per(
                name: str, what: str, unit: str, fits: dict[str, Any] = fits
            ) -> str:
                f = fits.get(name) or {}
                if what not in f:
                    return "n/a"
                return f"{f[what]:+.2f} ± {f[what + '_se']:.2f} {unit}"

            print(
                f"  retained per finished job (fit over rounds after warm-up): "
                f"{per('traced_bytes', 'jobs_done', 'B')} traced, "
                f"{per('gc_objects', 'jobs_done', 'gc objects')}, "
                f"{per('rss_kib', 'jobs_done', 'KiB RSS')} (before the fix "
                f"{OLD_LEAK_BYTES_PER_JOB:.0f} B/job)"
            )
            print(
                f"  held by the windows: {per('traced_bytes', 'claims', 'B')} per claim"
                + (
                    f", {per('traced_bytes', 'rx_events', 'B')} per receiver event"
                    if "rx_events" in s["structures_end"]
                    else ""
                )
            )
            if "retained_bytes_per_job_raw" in s:
                print(
                    f"  raw: traced {s['traced_kib_at_warm_up']} -> "
                    f"{s['traced_kib_end']} KiB ({s['traced_growth_kib']:+} KiB) = "
                    f"{s['retained_bytes_per_job_raw']} B/job, "
                    f"{s['retained_blocks_per_job_raw']} blocks/job; less resized "
                    f"tables ({s['resized_tables_kib']:+} KiB) and what the windows "
                    f"held more at the end ({s['windows_held_more_kib']:+} KiB): "
                    f"{s['retained_bytes_per_job_adjusted']} B/job"
                )
            print(
                f"  RSS: {s['rss_mib_at_warm_up']} -> {s['rss_mib_end']} MiB "
                f"({s['rss_growth_kib']:+d} KiB), range {s['rss_mib_range_after']}; "
                f"trend less the windows {s['rss_trend_kib_windows_adjusted']:+d} KiB; "
                f"gc objects {s['gc_objects_at_warm_up']} -> {s['gc_objects_end']}"
            )
            print(
                f"  structures, max after warm-up: {s['structures_max_after_warm_up']}"
            )
        else:
            print(
                "  warm-up not reached, or fewer than 3 rounds after it: run more "
                "jobs for the memory verdicts"
            )
        print(f"  structures at the end: {s['structures_end']}")
        print(
            f"  reconcile (finds nothing, {s['reconcile_lists_per_call']:g} list "
            f"request): client CPU round {s['reconcile_first_round']} "
            f"{s['reconcile_cpu_ms_first']} ms -> last {s['reconcile_cpu_ms_last']} ms "
            f"(x{s['reconcile_cpu_ratio']}), wall {s['reconcile_wall_ms_first']} -> "
            f"{s['reconcile_wall_ms_last']} ms (x{s['reconcile_wall_ratio']})"
        )
        print(
            f"  loop lag p99 per round: median {s['lag_ms_p99_median']} ms, max "
            f"{s['lag_ms_p99_max']} ms (round 1, before tracemalloc: "
            f"{s['lag_ms_p99_round_1_untraced']} ms)"
        )
        for g in m["top_growth"][:5]:
            print(
                f"  growth {g['size_diff_kib']:+.1f} KiB ({g['count_diff']:+d} blocks): "
                + " <- ".join(g["traceback_innermost_first"][:3])
            )
        print(f"  verdicts: {v}")
        ok = ok and all(x is not False for x in v.values())
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--round", type=int, default=2000)
    parser.add_argument("--time-scale", type=float, default=100.0)
    parser.add_argument("--modes", default="polling,webhook")
    parser.add_argument(
        "--frames", type=int, default=1, help="tracemalloc frames (0: no tracemalloc)"
    )
    parser.add_argument(
        "--claim-window", type=float, default=None, help="default: the client's"
    )
    parser.add_argument(
        "--retention", type=float, default=None, help="default: the receiver's"
    )
    parser.add_argument("--webhook-grace", type=float, default=600.0)
    parser.add_argument(
        "--period",
        type=float,
        default=0.0,
        help="start a round every PERIOD virtual seconds (default 0: back to back)",
    )
    parser.add_argument("--fake-keep", type=float, default=3600.0)
    parser.add_argument("--top", type=int, default=10, help="growth lines kept")
    parser.add_argument("--out", type=Path, default=None, help="results/soak.json")
    parser.add_argument("--serve-fake", metavar="SHARED_CLOCK", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(serve_fake(args.serve_fake, args.fake_keep))
        sys.exit(0)
    pin_client()
    result = asyncio.run(main(args))
    out_path = args.out or Path(__file__).parent / "results" / "soak.json"
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    met = report(result)
    print("verdict:", "OK (all targets met)" if met else "TARGET MISSED")
