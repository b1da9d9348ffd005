"""
The ledger: every submit this account's cooperating processes made, and whose job is whose.

The API has no idempotency key and its job list says nothing about who submitted
a job, so when a submit's answer is lost, the job list alone cannot tell its job
from another submitter's.  The ledger is what can: every attempt is recorded
*before* it is sent (``sending``), then its outcome (``created`` with its job,
``unknown``, ``none`` …), and every job claimed, one job to one attempt, whoever
proves it first.  A job in the account's list is then

* **explained**: claimed (its submit's answer, a verified delivery naming the
  attempt, the job list when nobody else could have made it, a person), or
  possibly made by an attempt still of unknown fate;
* **foreign**: nothing recorded could have made it: a submitter the ledger does
  not know (another app, another machine, the dashboard, a process from before
  the ledger).  Seeing one, reconcile no longer trusts the job list alone.

Where it lives (`ledger_for`): ``PixelByte(ledger=PATH)`` or ``$PIXELBYTE_LEDGER``,
else one SQLite file per account in the user's state directory, shared by every
process of the machine (`SqliteLedger`); ``ledger=None`` keeps it in memory
(`MemoryLedger`).  Everything is forgotten after a day (`DEFAULT_RETENTION`).
"""

from typing import TYPE_CHECKING, Any

from ._errors import LedgerError as LedgerError
from ._location import DEFAULT_RETENTION as DEFAULT_RETENTION
from ._location import LEDGER_ENV as LEDGER_ENV
from ._location import LedgerSpec as LedgerSpec
from ._location import account_id as account_id
from ._location import default_ledger_path as default_ledger_path
from ._location import ledger_for as ledger_for
from ._memory import MemoryLedger as MemoryLedger
from ._records import OPEN_STATES as OPEN_STATES
from ._records import Attempt as Attempt
from ._records import AttemptState as AttemptState
from ._records import Claim as Claim
from ._records import ClaimHow as ClaimHow
from ._store import SubmitLedger as SubmitLedger
from ._tracking import ACTIVE as ACTIVE
from ._tracking import DONE_STATES as DONE_STATES
from ._tracking import TRACKED_STATES as TRACKED_STATES
from ._tracking import TrackedRecord as TrackedRecord
from ._tracking import TrackedState as TrackedState
from ._tracking import TrackingLedger as TrackingLedger


if TYPE_CHECKING:
    from ._sqlite import SqliteLedger as SqliteLedger


__all__ = [
    "ACTIVE",
    "DEFAULT_RETENTION",
    "DONE_STATES",
    "LEDGER_ENV",
    "OPEN_STATES",
    "TRACKED_STATES",
    "Attempt",
    "AttemptState",
    "Claim",
    "ClaimHow",
    "LedgerError",
    "LedgerSpec",
    "MemoryLedger",
    "SqliteLedger",
    "SubmitLedger",
    "TrackedRecord",
    "TrackedState",
    "TrackingLedger",
    "account_id",
    "default_ledger_path",
    "ledger_for",
]


def __getattr__(name: str) -> Any:
    if name == "SqliteLedger":  # sqlite3 loads on first use
        from ._sqlite import SqliteLedger  # noqa: PLC0415 -- lazy on purpose

        return SqliteLedger
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
