"""
Submits of unknown fate: claims, the ledger's attempts, reconcile and the orphan audit.

The API has no idempotency key, so a submit whose answer was lost (a read timeout,
a dropped connection, a 5xx) may or may not have created a paid job — and a slow
backend may create it *after* the client gave up.  "No job found" therefore only
means something once a **settle horizon** has passed since the attempt began:
`Reconciler.reconcile` keeps looking until then, and returns ``None`` ("re-sending
is safe") only after it.  A job found in the meantime is taken only with proof
(`_reconciler`); the windows and the sorting of the job list are `_windows`; the
audit, which prices what nothing claims, is `_audit`.

What this process claims (jobs it submitted, adopted or reconciled) is remembered
for a window tied to the settle horizon, pruned by time, so nothing grows with the
number of jobs a long-running process has seen; the ledger (`pixelbyte_async._ledger`)
keeps what every process of the machine recorded.
"""

from ._claims import DEFAULT_CLAIM_WINDOW as DEFAULT_CLAIM_WINDOW
from ._claims import DEFAULT_CLOCK_SKEW as DEFAULT_CLOCK_SKEW
from ._claims import DEFAULT_SETTLE as DEFAULT_SETTLE
from ._claims import AttemptSource as AttemptSource
from ._claims import Claims as Claims
from ._claims import ReconcileClient as ReconcileClient
from ._claims import attempt_id as attempt_id
from ._claims import check_settle as check_settle
from ._claims import iso as iso
from ._claims import new_owner as new_owner
from ._claims import owner_gone as owner_gone
from ._claims import timestamp as timestamp
from ._reconciler import Reconciler as Reconciler


__all__ = [
    "DEFAULT_CLAIM_WINDOW",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_SETTLE",
    "AttemptSource",
    "Claims",
    "ReconcileClient",
    "Reconciler",
    "attempt_id",
    "check_settle",
    "iso",
    "new_owner",
    "owner_gone",
    "timestamp",
]
