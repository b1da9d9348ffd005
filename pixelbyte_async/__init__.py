"""
pixelbyte_async: the asyncio-first SDK for the PixelByte generation API.

Submit paid, slow generation jobs and get their results back safely::

    async with PixelByte() as pb:
        job = await pb.submit(KlingO1StartEndFrame(
            image_url="https://example.com/a.jpg",
            end_image_url="https://example.com/b.jpg",
            prompt="sunrise to starry night",
            duration=5,
        ))
        done = await job.wait()
        await done.download("out.mp4")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import ClientConfig as ClientConfig
from ._errors import AmbiguousSubmitError as AmbiguousSubmitError
from ._errors import APIError as APIError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ClientClosedError as ClientClosedError
from ._errors import DownloadError as DownloadError
from ._errors import EventLoopMismatch as EventLoopMismatch
from ._errors import InsufficientBalance as InsufficientBalance
from ._errors import InvalidRequestError as InvalidRequestError
from ._errors import JobCancelled as JobCancelled
from ._errors import JobError as JobError
from ._errors import JobFailed as JobFailed
from ._errors import MissingOutputError as MissingOutputError
from ._errors import NotFound as NotFound
from ._errors import PermissionDenied as PermissionDenied
from ._errors import PixelByteError as PixelByteError
from ._errors import RateLimited as RateLimited
from ._errors import ReconcileError as ReconcileError
from ._errors import ReconcileTimeout as ReconcileTimeout
from ._errors import RequestTimeout as RequestTimeout
from ._errors import ResponseDecodeError as ResponseDecodeError
from ._errors import ResponseTooLarge as ResponseTooLarge
from ._errors import ServerError as ServerError
from ._errors import TransportError as TransportError
from ._errors import UnexpectedRedirect as UnexpectedRedirect
from ._errors import ValidationError as ValidationError
from ._errors import WaitTimeout as WaitTimeout
from ._errors import WebhookVerificationError as WebhookVerificationError
from ._models import CatalogModel as CatalogModel
from ._models import Estimate as Estimate
from ._models import EstimateLine as EstimateLine
from ._models import JobErrorInfo as JobErrorInfo
from ._models import JobInfo as JobInfo
from ._models import JobOutput as JobOutput
from ._models import JobStatus as JobStatus
from ._models import Upload as Upload
from ._polling import EndWindow as EndWindow
from ._polling import EtaBias as EtaBias
from ._polling import PollPolicy as PollPolicy
from ._retry import RetryPolicy as RetryPolicy


if TYPE_CHECKING:
    from ._audit_report import AuditOrphan as AuditOrphan
    from ._audit_report import AuditReport as AuditReport
    from ._batch import Batch as Batch
    from ._batch import BatchInput as BatchInput
    from ._batch import BatchInputError as BatchInputError
    from ._batch import BatchItem as BatchItem
    from ._batch import BatchItemStatus as BatchItemStatus
    from ._batch import BatchPlan as BatchPlan
    from ._batch import BatchSummary as BatchSummary
    from ._batch import BudgetExceeded as BudgetExceeded
    from ._batch import PlannedItem as PlannedItem
    from ._batch import Settling as Settling
    from ._batch import read_batch_file as read_batch_file
    from ._batch import resolve_batch_row as resolve_batch_row
    from ._batch import run_batch as run_batch
    from ._client import PixelByte as PixelByte
    from ._clock import Clock as Clock
    from ._clock import SystemClock as SystemClock
    from ._clock import Timer as Timer
    from ._clock import VirtualClock as VirtualClock
    from ._inputs import KLING_O1_PRO_SEF as KLING_O1_PRO_SEF
    from ._inputs import KLING_O1_STANDARD_SEF as KLING_O1_STANDARD_SEF
    from ._inputs import PRICES as PRICES
    from ._inputs import KlingO1StartEndFrame as KlingO1StartEndFrame
    from ._inputs import ModelInput as ModelInput
    from ._inputs import Price as Price
    from ._job import Job as Job
    from ._journal import JournalError as JournalError
    from ._ledger import LedgerError as LedgerError
    from ._ledger import MemoryLedger as MemoryLedger
    from ._ledger import SqliteLedger as SqliteLedger
    from ._ledger import SubmitLedger as SubmitLedger
    from ._ledger import TrackedRecord as TrackedRecord
    from ._ledger import TrackingLedger as TrackingLedger
    from ._report import write_batch_report as write_batch_report
    from ._sync import SyncJob as SyncJob
    from ._sync import SyncPixelByte as SyncPixelByte
    from ._tracked import LostSubmit as LostSubmit
    from ._transport import MockTransport as MockTransport
    from ._transport import Request as Request
    from ._transport import Response as Response
    from ._transport import StreamResponse as StreamResponse
    from ._transport import Transport as Transport
    from ._transport import json_response as json_response

#: Imported on first use (`__getattr__`), so that ``import pixelbyte_async`` is
#: quick and imports neither aiohttp nor asyncio: the client, its transport and
#: what leads to them (`Job`, `AuditReport`), clocks, inputs and ledgers load with
#: the first of their names (the command line's ``--help`` needs none of them);
#: batches and their SQLite journal are not needed to submit and wait.  Type
#: checkers read the imports above.  Errors, configuration and the response types
#: load at once: the command line's parser needs them too.
_LAZY = {
    "AuditOrphan": "._audit_report",
    "AuditReport": "._audit_report",
    "Batch": "._batch",
    "BatchInput": "._batch",
    "BatchInputError": "._batch",
    "BatchItem": "._batch",
    "BatchItemStatus": "._batch",
    "BatchPlan": "._batch",
    "BatchSummary": "._batch",
    "BudgetExceeded": "._batch",
    "PlannedItem": "._batch",
    "read_batch_file": "._batch",
    "resolve_batch_row": "._batch",
    "run_batch": "._batch",
    "Settling": "._batch",
    "write_batch_report": "._report",
    "PixelByte": "._client",
    "Clock": "._clock",
    "SystemClock": "._clock",
    "Timer": "._clock",
    "VirtualClock": "._clock",
    "KLING_O1_PRO_SEF": "._inputs",
    "KLING_O1_STANDARD_SEF": "._inputs",
    "KlingO1StartEndFrame": "._inputs",
    "ModelInput": "._inputs",
    "Price": "._inputs",
    "PRICES": "._inputs",
    "Job": "._job",
    "JournalError": "._journal",
    "LedgerError": "._ledger",
    "MemoryLedger": "._ledger",
    "SqliteLedger": "._ledger",
    "SubmitLedger": "._ledger",
    "TrackedRecord": "._ledger",
    "LostSubmit": "._tracked",
    "TrackingLedger": "._ledger",
    "SyncJob": "._sync",
    "SyncPixelByte": "._sync",
    "json_response": "._transport",
    "MockTransport": "._transport",
    "Request": "._transport",
    "Response": "._transport",
    "StreamResponse": "._transport",
    "Transport": "._transport",
}

__all__ = [
    "KLING_O1_PRO_SEF",
    "KLING_O1_STANDARD_SEF",
    "PRICES",
    "APIError",
    "AmbiguousSubmitError",
    "AuditOrphan",
    "AuditReport",
    "AuthenticationError",
    "Batch",
    "BatchInput",
    "BatchInputError",
    "BatchItem",
    "BatchItemStatus",
    "BatchPlan",
    "BatchSummary",
    "BudgetExceeded",
    "CatalogModel",
    "ClientClosedError",
    "ClientConfig",
    "Clock",
    "DownloadError",
    "EndWindow",
    "Estimate",
    "EstimateLine",
    "EtaBias",
    "EventLoopMismatch",
    "InsufficientBalance",
    "InvalidRequestError",
    "Job",
    "JobCancelled",
    "JobError",
    "JobErrorInfo",
    "JobFailed",
    "JobInfo",
    "JobOutput",
    "JobStatus",
    "JournalError",
    "KlingO1StartEndFrame",
    "LedgerError",
    "LostSubmit",
    "MemoryLedger",
    "MissingOutputError",
    "MockTransport",
    "ModelInput",
    "NotFound",
    "PermissionDenied",
    "PixelByte",
    "PixelByteError",
    "PlannedItem",
    "PollPolicy",
    "Price",
    "RateLimited",
    "ReconcileError",
    "ReconcileTimeout",
    "Request",
    "RequestTimeout",
    "Response",
    "ResponseDecodeError",
    "ResponseTooLarge",
    "RetryPolicy",
    "ServerError",
    "Settling",
    "SqliteLedger",
    "StreamResponse",
    "SubmitLedger",
    "SyncJob",
    "SyncPixelByte",
    "SystemClock",
    "Timer",
    "TrackedRecord",
    "TrackingLedger",
    "Transport",
    "TransportError",
    "UnexpectedRedirect",
    "Upload",
    "ValidationError",
    "VirtualClock",
    "WaitTimeout",
    "WebhookVerificationError",
    "json_response",
    "read_batch_file",
    "resolve_batch_row",
    "run_batch",
    "write_batch_report",
]


def __dir__() -> list[str]:
    # The lazy names too, loaded or not: dir() lists every export, as before.
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module  # noqa: PLC0415 -- lazy on purpose

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 -- lazy, as stamina does

        return version("pixelbyte-async")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
