"""
A batch's budget: what its rows are estimated to cost and what they were charged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Iterable

import anyio

from pixelbyte_async._errors import (
    InvalidRequestError,
    NotFound,
    PixelByteError,
    ValidationError,
)
from pixelbyte_async._inputs import local_cost, priced_by, usd
from pixelbyte_async._seams import BatchClient

from ._rows import Entry, canonical
from ._types import SPENDING, BatchInputError, BatchPlan, BudgetExceeded, is_fatal


__all__ = ["Budget"]

log = logging.getLogger("pixelbyte_async")


class Budget:
    """
    A batch's spending limit, its rows' estimates and what each row is charged.

    Estimates come from the API's ``/estimate`` (the account's prices); the SDK's
    list-price table stands in only when the API cannot be asked.  Charges are
    counted per row, net of refunds, with the estimate standing in for a charge
    the API did not report, so the check before each submit sees every earlier one.
    """

    def __init__(
        self, pb: BatchClient, *, limit: int | None, assume_list_prices: bool = False
    ) -> None:
        self._pb = pb
        #: The limit (*max_cost_micro_cents*), if any.
        self.limit = limit
        self.assume_list_prices = assume_list_prices
        self._charges: dict[str, int] = {}
        #: The rows whose charge is a list price, not what the API said.
        self._assumed: set[str] = set()

    # -- what the rows cost ----------------------------------------------------------

    @property
    def charged(self) -> int:
        """What the batch's jobs cost so far, as far as known (net of refunds)."""
        return sum(self._charges.values())

    @property
    def assumed(self) -> int:
        """The part of `charged` that is list prices the API never confirmed."""
        return sum(self._charges[k] for k in self._assumed if k in self._charges)

    def charge_of(self, key: str) -> int | None:
        """What row *key* costs as far as known; ``None`` while nothing is counted."""
        return self._charges.get(key)

    def charge(self, key: str, micro_cents: int, *, assumed: bool = False) -> None:
        """
        Count *micro_cents* as what row *key* costs, replacing any earlier count.

        *assumed*: a list price, not the API's word (its charge or estimate).
        """
        self._charges[key] = micro_cents
        if assumed:
            self._assumed.add(key)
        else:
            self._assumed.discard(key)

    def refund(self, key: str) -> None:
        """Count row *key*'s job as refunded (it failed or was cancelled)."""
        self._charges[key] = 0

    def forget(self, key: str) -> None:
        """Count nothing for row *key*: its submit created no job after all."""
        self._charges.pop(key, None)

    # -- before the first submit ---------------------------------------------------

    async def estimate(
        self, entries: list[Entry], *, concurrency: int
    ) -> tuple[str, str | None]:
        """
        Estimate every entry with the API (your prices), once per distinct price.

        Inputs of a model the SDK knows the pricing of are asked once per price
        (e.g. per duration: 2,000 prompts of 5 s are one request); others once per
        distinct input.  An input the API rejects has its alike inputs asked one
        by one (the rejection may be its own).  The local price table stands in
        only when the API cannot be asked (it is down, or the key may not
        estimate); returns ``(source, note)``.
        """
        groups = _alike(entries)
        if not groups:
            return "none", None
        problems: list[tuple[str, str]] = []
        unreachable: list[PixelByteError] = []
        limiter = anyio.CapacityLimiter(concurrency)
        asked = 0

        async def ask(group: list[Entry]) -> None:
            nonlocal asked
            async with limiter:
                cost, problem, failure = await self._estimate_one(group[0])
            if problem is not None and len(group) > 1:
                # Alike in price, not necessarily alike to the API: ask each.
                async with anyio.create_task_group() as tg:
                    for entry in group:
                        tg.start_soon(ask, [entry])
                return
            asked += 1
            if failure is not None:
                unreachable.append(failure)
            if problem is not None:
                problems.extend((f"input {e.index} ({e.key})", problem) for e in group)
            for entry in group:
                entry.estimate = cost
                entry.estimate_assumed = failure is not None

        async with anyio.create_task_group() as tg:
            for group in groups.values():
                tg.start_soon(ask, group)
        _raise_problems(unreachable, problems)
        return _estimate_source(unreachable, asked)

    async def _estimate_one(
        self, entry: Entry
    ) -> tuple[int | None, str | None, PixelByteError | None]:
        """``(cost, problem, why the API could not be asked)`` for one input."""
        try:
            if entry.typed is not None:
                estimate = await self._pb.estimate(entry.typed)
            else:
                estimate = await self._pb.estimate(entry.model, entry.raw)
        except (InvalidRequestError, NotFound, ValidationError) as exc:
            return None, f"estimate rejected: {exc}", None
        except PixelByteError as exc:
            cost = None if is_fatal(exc) else local_cost(entry.model, entry.document)
            if cost is None and not is_fatal(exc):
                return (
                    None,
                    (
                        f"cannot be estimated: the API's estimate failed ({exc}) and "
                        "the SDK has no list price for it"
                    ),
                    None,
                )
            return cost, None, exc
        return estimate.estimated_cost_micro_cents, None, None

    def fit(self, entries: Iterable[Entry]) -> None:
        """Keep the spending rows that fit the budget, in input order."""
        assert self.limit is not None  # noqa: S101 -- fit requires a limit
        total = self.charged
        for entry in sorted(entries, key=lambda e: e.index):
            if entry.action not in SPENDING:
                continue
            cost = entry.estimate or 0
            if entry.action in {"submit", "retry"} and total + cost > self.limit:
                entry.action = "over_budget"
                continue
            total += cost

    def check(self, plan: BatchPlan) -> None:
        """
        Raise `BudgetExceeded` if *plan* does not fit the limit, or cannot be known to.

        A limit needs the account's prices: with list prices only (the API's
        estimate could not be asked), it is refused unless *assume_list_prices*.
        """
        if (
            self.limit is not None
            and plan.estimate_source in {"local", "mixed"}
            and not self.assume_list_prices
        ):
            raise BudgetExceeded(
                f"a limit of {usd(self.limit)} needs your account's prices, and the "
                "API's estimate could not be asked, so your account may pay more than "
                f"the {usd(plan.total_micro_cents)} the SDK's list prices say; pass "
                "--assume-list-prices (assume_list_prices=True) to budget at list "
                "prices, or try again later; nothing was submitted",
                estimate_micro_cents=plan.total_micro_cents,
                limit_micro_cents=self.limit,
                charged_micro_cents=plan.charged_micro_cents,
            )
        if plan.within_budget:
            return
        assert self.limit is not None  # noqa: S101 -- within_budget says so
        earlier = (
            f" ({usd(plan.charged_micro_cents)} already charged by earlier runs)"
            if plan.charged_micro_cents
            else ""
        )
        raise BudgetExceeded(
            f"the batch is estimated at {usd(plan.total_micro_cents)}{earlier}, "
            f"over the limit of {usd(self.limit)}; nothing was submitted",
            estimate_micro_cents=plan.total_micro_cents,
            limit_micro_cents=self.limit,
            charged_micro_cents=plan.charged_micro_cents,
        )

    # -- while submitting ------------------------------------------------------------

    def refuses(self, entry: Entry) -> bool:
        """Whether sending *entry* would cross the limit (then submitting stops)."""
        if self.limit is None:
            return False
        cost = entry.estimate or 0
        if self.charged + cost <= self.limit:
            return False
        log.warning(
            "batch: budget of %s reached (%s charged); submitting stops",
            usd(self.limit),
            usd(self.charged),
        )
        return True

    def reprice(
        self,
        model: str,
        ratio: float,
        entries: Iterable[Entry],
        *,
        reported: Container[str],
    ) -> None:
        """The API charged more than estimated: raise the unsent rows' estimates."""
        log.warning(
            "batch: %s was charged %.0f%% over its estimate; the budget now counts "
            "the rows still to send at that price",
            model,
            (ratio - 1) * 100,
        )
        for other in entries:
            if (
                other.model == model
                and other.estimate
                and other.key not in self._charges
                and other.key not in reported
            ):
                other.estimate = math.ceil(other.estimate * ratio)


def _alike(entries: list[Entry]) -> dict[bytes, list[Entry]]:
    """*entries* by what the API's estimate depends on (their price, if known)."""
    groups: dict[bytes, list[Entry]] = {}
    for entry in entries:
        priced = priced_by(entry.model, entry.document)
        key = canonical(
            [entry.model, entry.document if priced is None else priced, priced]
        )
        groups.setdefault(key, []).append(entry)
    return groups


def _raise_problems(
    unreachable: list[PixelByteError], problems: list[tuple[str, str]]
) -> None:
    """Raise what stops the batch before its first submit, if anything."""
    fatal = [exc for exc in unreachable if is_fatal(exc)]
    if fatal:
        raise fatal[0]
    if problems:
        raise BatchInputError(
            f"{len(problems)} batch inputs were rejected by the API's estimate; "
            "nothing was submitted",
            problems=sorted(problems),
        )


def _estimate_source(
    unreachable: list[PixelByteError], asked: int
) -> tuple[str, str | None]:
    """``(source, note)`` of a batch's estimates, given the failed API calls."""
    if not unreachable:
        return "api", None
    note = (
        f"the API's estimate could not be asked ({unreachable[0]}); list prices "
        "from the SDK's table were used, and your account may pay more"
    )
    log.warning("batch: %s", note)
    return ("local" if len(unreachable) == asked else "mixed"), note
