"""
Narrow Protocols at the seams between the package's layers.

A layer that needs a higher one depends on a Protocol here instead of importing it,
so no import cycle can form: the batch (`pixelbyte_async._batch`) drives the client
through `BatchClient`, and `PixelByte` satisfies it unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any, Protocol


if TYPE_CHECKING:
    import os

    from ._audit_report import AuditReport
    from ._clock import Clock
    from ._config import ClientConfig
    from ._errors import AmbiguousSubmitError
    from ._inputs import ModelInput
    from ._job import Job
    from ._ledger import SubmitLedger
    from ._models import Estimate


__all__ = ["BatchClient"]


class BatchClient(Protocol):
    """
    The client as a batch uses it: exactly the public calls `run_batch` makes.

    `PixelByte` satisfies it.  Only the parameters the batch passes are listed;
    a stand-in for tests needs no more than these.
    """

    @property
    def clock(self) -> Clock:
        """The clock: ``monotonic()`` times the run, ``time()`` dates attempts."""
        ...

    @property
    def ledger(self) -> SubmitLedger:
        """Where the account's submits are recorded (a person's decisions too)."""
        ...

    @property
    def settle(self) -> float:
        """The settle horizon of `reconcile` (seconds), unless the batch sets one."""
        ...

    @property
    def config(self) -> ClientConfig:
        """The configuration: ``max_concurrent_jobs`` sizes the batch's workers."""
        ...

    async def estimate(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
    ) -> Estimate:
        """Estimate one input's cost with the API (a typed input, or slug and input)."""
        ...

    async def upload(self, source: os.PathLike[str] | bytes | IO[bytes]) -> str:
        """Upload a local frame and return its URL."""
        ...

    async def submit(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        attempt: str | None = None,
        on_sending: Callable[[float], Awaitable[object]] | None = None,
    ) -> Job:
        """Submit one job, tagged with *attempt*, journaled by *on_sending*."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """Re-attach a job an earlier run submitted."""
        ...

    async def reconcile(
        self,
        error: AmbiguousSubmitError,
        *,
        settle: float | None = None,
        exclude: Iterable[str] = (),
        competing: Iterable[AmbiguousSubmitError] = (),
    ) -> Job | None:
        """Find the job a submit of unknown fate created (``None``: none, resend)."""
        ...

    async def audit(
        self,
        *,
        since: float,
        model: str | None = None,
        exclude: Iterable[str] = (),
        lost: Iterable[AmbiguousSubmitError] = (),
    ) -> AuditReport:
        """List the account's jobs created since *since* that nothing claims."""
        ...
