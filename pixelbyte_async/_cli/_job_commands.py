"""
``status``, ``cancel``, ``estimate``, ``jobs`` and ``models``: one client call each.

Each prints one line per job or model (or JSON with ``--json``); `_estimate_request`
turns ``estimate``'s options into a model and its input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO, cast

from pixelbyte_async._errors import ValidationError
from pixelbyte_async._inputs import (
    KLING_O1_PRO_SEF,
    KLING_O1_STANDARD_SEF,
    KlingO1StartEndFrame,
)
from pixelbyte_async._ledger import TRACKED_STATES, TrackedState
from pixelbyte_async._models import JobInfo


if TYPE_CHECKING:
    from pixelbyte_async._ledger import TrackingLedger

from ._connection import _client
from ._output import _job_json, _job_line, _print_json, _usd


async def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    async with _client(args) as pb:
        job = await pb.get_job(args.job)
    if args.json:
        _print_json(_job_json(job.info), out)
    else:
        print(_job_line(job.info), file=out)
    return 0


async def _cancel(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    async with _client(args) as pb:
        job = await pb.get_job(args.job)
        refunded = await job.cancel()
    if args.json:
        _print_json(
            {
                "jobId": job.id,
                "status": job.status.value,
                "refundedMicroCents": refunded,
            },
            out,
        )
    else:
        print(f"{job.id} {job.status.value}, refunded {_usd(refunded)}", file=out)
    return 0


def _estimate_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.model is not None:
        if args.duration is not None or args.pro:
            raise ValidationError("give --model/--input or --duration/--pro, not both")
        try:
            value = json.loads(args.input) if args.input else {}
        except ValueError as exc:
            raise ValidationError(f"--input is not JSON: {exc}", field="input") from exc
        if not isinstance(value, dict):
            raise ValidationError("--input must be a JSON object", field="input")
        return args.model, value
    if args.input is not None:
        raise ValidationError("--input needs --model", field="input")
    duration = args.duration or "5"
    low, high = KlingO1StartEndFrame.MIN_DURATION, KlingO1StartEndFrame.MAX_DURATION
    if not duration.isdigit() or not low <= int(duration) <= high:
        raise ValidationError(
            f"duration must be {low}..{high} seconds, got {duration!r}",
            field="duration",
        )
    slug = KLING_O1_PRO_SEF if args.pro else KLING_O1_STANDARD_SEF
    return slug, {"duration": str(int(duration))}


async def _estimate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    slug, value = _estimate_request(args)
    async with _client(args) as pb:
        estimate = await pb.estimate(slug, value, local=args.local)
    cost = estimate.estimated_cost_micro_cents
    if args.json:
        _print_json(
            {
                "model": slug,
                "input": value,
                "estimatedCostMicroCents": cost,
                "baseCostMicroCents": estimate.base_cost_micro_cents,
                "hasDiscount": estimate.has_discount,
                "source": estimate.source,
            },
            out,
        )
    else:
        print(
            f"{_usd(cost)} ({cost:,} micro-cents) for {slug} "
            f"{json.dumps(value)} [{estimate.source}]",
            file=out,
        )
    return 0


async def _jobs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if getattr(args, "jobs_view", None) == "tracked":
        return await _tracked(args, out, err)
    del err
    found: list[JobInfo] = []
    async with _client(args) as pb:
        listing = pb.list_jobs(status=args.status, model=args.model, limit=args.limit)
        async with contextlib.aclosing(listing) as jobs:
            found.extend([job.info async for job in jobs])
    if args.json:
        _print_json([_job_json(info) for info in found], out)
    else:
        for info in found:
            print(_job_line(info), file=out)
    return 0


async def _tracked(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``jobs tracked``: the ledger's tracked jobs, for an operator."""
    del err
    states: tuple[TrackedState, ...] = (
        TRACKED_STATES if args.state == "all" else (args.state,)
    )
    async with _client(args) as pb:
        records = await cast("TrackingLedger", pb.ledger).tracked(states=states)
    if args.json:
        _print_json(
            [
                {
                    "attempt": r.attempt,
                    "jobId": r.job_id,
                    "model": r.model,
                    "state": r.state,
                    "group": r.group,
                    "context": json.loads(r.context),
                    "owner": r.owner,
                    "failures": r.failures,
                    "error": r.error,
                    "createdAt": _iso_unix(r.created_at),
                    "updatedAt": _iso_unix(r.updated_at),
                }
                for r in records
            ],
            out,
        )
        return 0
    if not records:
        print("no tracked jobs", file=out)
        return 0
    print(f"{'JOB':<20}  {'STATE':<8}  {'FAILS':>5}  {'SINCE':<20}  CONTEXT", file=out)
    for r in records:
        print(
            f"{r.job_id or '(submit ' + r.attempt[:8] + ')':<20}  {r.state:<8}  "
            f"{r.failures:>5}  {_iso_unix(r.created_at):<20}  {r.context[:60]}",
            file=out,
        )
    return 0


def _iso_unix(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _models(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    del err
    async with _client(args) as pb:
        models = await pb.models()
    if args.json:
        _print_json(
            [
                {
                    "slug": m.slug,
                    "name": m.name,
                    "category": m.category,
                    "capability": m.capability,
                    "provider": m.provider,
                    "pricing": m.pricing,
                }
                for m in models
            ],
            out,
        )
    else:
        rows = [(m.slug, _price(m.pricing), m.name or "") for m in models]
        slug_width = max([4, *(len(slug) for slug, _, _ in rows)])
        price_width = max([5, *(len(price) for _, price, _ in rows)])
        print(f"{'SLUG':<{slug_width}}  {'PRICE':<{price_width}}  NAME", file=out)
        for slug, price, name in rows:
            print(f"{slug:<{slug_width}}  {price:<{price_width}}  {name}", file=out)
    return 0


def _price(pricing: Mapping[str, Any] | None) -> str:
    """A catalogue price in words: ``$0.05/s``, ``$0.01 each``, or ``?``."""
    if not pricing:
        return "?"
    base = pricing.get("baseCostMicroCents")
    if not isinstance(base, int | float) or isinstance(base, bool):
        return "?"
    usd = _usd(int(base))
    unit = pricing.get("unit")
    if pricing.get("type") == "per_second" or unit == "second":
        return f"{usd}/s"
    return f"{usd} each" if unit in {None, "generation"} else f"{usd}/{unit}"
