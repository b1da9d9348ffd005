"""
`JobQueries`: the part of `PixelByte` that finds jobs (get, list, reconcile, audit).

A mixin of `PixelByte`, split off by concern so each file reads in one sitting; it
uses only the client parts declared below, which `PixelByte.__init__` sets.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._audit_report import AuditReport
from ._errors import AmbiguousSubmitError, ValidationError
from ._job import Job
from ._models import JobInfo, JobStatus
from ._reconcile import DEFAULT_CLOCK_SKEW
from ._serde import decode_job, items_of


if TYPE_CHECKING:
    from ._links import JobLink
    from ._pipeline import RequestPipeline
    from ._reconcile import Reconciler
    from ._slots import JobSlots


__all__ = ["JobQueries"]

_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]+")
#: Jobs whose last GET body is kept with its decoded state (not tracked ones:
#: their handles keep theirs).
_DECODED = 256
#: ``GET /v1/jobs/{id}`` paths by job id (any client's), and how many are kept.
_PATHS: dict[str, str] = {}
_PATHS_KEPT = 1024


def _job_path(job_id: object) -> str:
    """The path of *job_id*'s GET (its id percent-encoded if need be), remembered."""
    if not isinstance(job_id, str) or not job_id.strip():
        raise ValidationError("job_id must be a non-empty string", field="job_id")
    safe_id = job_id if _SAFE_ID.fullmatch(job_id) else quote(job_id, safe="")
    if len(_PATHS) >= _PATHS_KEPT:
        _PATHS.clear()
    path = _PATHS[job_id] = f"/v1/jobs/{safe_id}"
    return path


class JobQueries:
    """`PixelByte`'s calls that find jobs; see `PixelByte`."""

    _pipeline: RequestPipeline
    _slots: JobSlots
    _job_link: JobLink
    _reconciler: Reconciler
    _decoded_bodies: OrderedDict[str, tuple[Any, JobInfo]]

    def _check_open(self) -> None:
        raise NotImplementedError  # PixelByte's

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """
        Fetch a job by id and return a handle on it (e.g. after a restart).

        Raises:
            NotFound: No such job (or not yours).

        """
        path = _PATHS.get(job_id) if isinstance(job_id, str) else None
        if path is None:
            path = _job_path(job_id)
        data, rid = await self._pipeline.request("GET", path, timeout=timeout)
        existing = self._slots.jobs.get(job_id)
        if existing is not None:
            existing._observe_body(data, rid)  # noqa: SLF001 -- same package
            return existing
        return self._adopt(self._decoded(job_id, data, rid))

    def _decoded(self, job_id: str, data: Any, rid: str | None) -> JobInfo:
        """
        *data* decoded, or the state decoded from the same body last time.

        A finished job polled again (a status page, ``pixelbyte-async status``)
        answers the same body each time: it is decoded once.  Its state keeps
        the request id of the answer that first reported it, as `JobInfo` says.
        """
        cache = self._decoded_bodies
        seen = cache.get(job_id)
        # The pipeline hands out the same payload for an unchanged body.
        if seen is not None and (seen[0] is data or seen[0] == data):
            cache.move_to_end(job_id)
            return seen[1]
        info = decode_job(data, rid)
        cache[job_id] = (data, info)
        cache.move_to_end(job_id)
        while len(cache) > _DECODED:
            cache.popitem(last=False)
        return info

    def _adopt(self, info: JobInfo) -> Job:
        existing = self._slots.jobs.get(info.id)
        if existing is not None:
            existing._observe(info)  # noqa: SLF001 -- same client
            return existing
        return Job(self._job_link, info)

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[Job, None]:
        """
        Iterate over your jobs, newest first, following ``nextCursor`` pages.

        Args:
            status: Only jobs in this status.
            model: Only jobs of this model slug.
            limit: Stop after this many jobs (default: all).
            page_size: Jobs per request (1..100).

        """
        if not 1 <= page_size <= 100:  # noqa: PLR2004 -- the API's maximum
            raise ValidationError("page_size must be 1..100", field="page_size")
        params: dict[str, str] = {}
        if status is not None:
            params["status"] = (
                JobStatus(status).value if isinstance(status, str) else status.value
            )
        if model is not None:
            params["modelId"] = model  # the API's name for the slug filter (§4.4)
        count = 0
        cursor: str | None = None
        while True:
            size = page_size if limit is None else min(page_size, limit - count)
            if size <= 0:
                return
            page_params = {**params, "limit": str(size)}
            if cursor:
                page_params["cursor"] = cursor
            data, _ = await self._pipeline.request(
                "GET", "/v1/jobs", params=page_params
            )
            items = items_of(data, "jobs")
            for item in items:
                yield self._adopt(decode_job(item))
                count += 1
                if limit is not None and count >= limit:
                    return
            next_cursor = data.get("nextCursor") if isinstance(data, dict) else None
            has_more = data.get("hasMore") if isinstance(data, dict) else False
            if (
                not items
                or not next_cursor
                or has_more is False
                or next_cursor == cursor
            ):
                return
            cursor = str(next_cursor)

    async def reconcile(
        self,
        error: AmbiguousSubmitError,
        *,
        settle: float | None = None,
        timeout: float | None = None,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        exclude: Iterable[str] = (),
        competing: Iterable[AmbiguousSubmitError] = (),
    ) -> Job | None:
        """
        Find the job an ambiguous submit may have created, instead of paying twice.

        A slow backend can create the job *after* the client gave up, so "no job
        found" means nothing until a **settle horizon** has passed since the
        attempt began (``error.started_at``).  Reconcile looks at the job list at a
        gentle cadence (2 s, doubling to 30 s) for a job of the same model created
        in the attempt's window (from its start to the end of its horizon, widened
        by *clock_skew*) that nothing in this process claims and that is not in
        *exclude* (ids a journal accounts for, for example).
        With webhooks in use, a delivery carrying the attempt's nonce proves which
        job is whose.  Build the error yourself to reconcile an attempt recorded by
        an earlier process: ``AmbiguousSubmitError(msg, model=..., input=...,
        webhook_url=None, started_at=...)``.

        Args:
            error: The `AmbiguousSubmitError` the submit raised.
            settle: The horizon in seconds (default: the client's ``settle``, 300).
            timeout: Give up looking after this many seconds (default: no limit
                but the horizon); then `ReconcileTimeout` is raised, never ``None``.
            clock_skew: How far the server's clock may be off ours.
            exclude: Job ids that are known to belong to something else.
            competing: Other attempts of unknown fate this client did not make
                (e.g. other rows of a journal) that could own the same jobs; the
                client's own ambiguous submits are taken into account anyway.

        Returns:
            The job, adopted into this client (it counts against the job limit), as
            soon as it appears; ``None`` only once the horizon has passed with
            nothing found (re-submitting is then safe).

        Submits of the same model still in flight are waited for, and other
        unreconciled ambiguous submits of the same model are taken into account:
        when more than one attempt could own a job, nothing is guessed.

        Raises:
            ReconcileError: Several candidates, or competing ambiguous submits
                (``.candidates``, ``.competing``): decide yourself; re-submitting
                any of them may pay twice.
            ReconcileTimeout: *timeout* ended before the horizon; the fate is
                still unknown (``.settle_at`` says until when).

        """
        self._check_open()
        return await self._reconciler.reconcile(
            error,
            settle=settle,
            timeout=timeout,
            clock_skew=clock_skew,
            exclude=exclude,
            competing=competing,
        )

    async def audit(
        self,
        *,
        since: datetime | float,
        until: datetime | float | None = None,
        model: str | None = None,
        exclude: Iterable[str] = (),
        lost: Iterable[AmbiguousSubmitError] = (),
    ) -> AuditReport:
        """
        List the account's jobs created in a window that nothing here claims.

        A job nothing claims (this client, the ledger, *exclude*) is an **orphan**
        when a lost submit may have made it: one of the ledger's submits of unknown
        fate, or one of *lost*; it is paid for and most likely yours.  Any other is
        another submitter's as far as this machine knows (the report's ``others``).
        See "Sharing an account" in the docs.

        Args:
            since: Start of the window (a datetime, naive = UTC, or Unix seconds).
            until: End of the window (default: now).
            model: Only jobs of this model slug.
            exclude: Job ids claimed elsewhere (a batch journal's, say).
            lost: Lost submits to tie jobs to besides the ledger's (a batch
                journal's, kept on another machine or by an earlier version).

        Returns:
            An `AuditReport`: `AuditReport.cancel_pending` cancels the pending
            orphans proven to be this machine's (a refund), and every orphan's
            ``job`` can be waited for and downloaded.

        .. versionadded:: 0.3.0
        .. versionchanged:: 0.3.0 *lost*; orphans are the ledger's lost submits'.

        """
        self._check_open()
        return await self._reconciler.audit(
            since=since, until=until, model=model, exclude=exclude, lost=lost
        )
