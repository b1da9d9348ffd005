"""
Tracked jobs: jobs submitted with a context, handled once they end, across restarts.

`Tracker` is a client's part for them: it records a tracked job in the ledger before
its submit is sent (`TrackingLedger`), holds a lease on the jobs it watches (renewed
while the process lives), runs the ``on_finished`` handlers when a job ends (retried
with back-off, parked after `Tracker.park_after` failures), and on `Tracker.resume`
takes over the jobs whose process is gone.  It sees the client only as a
`TrackedClient`.
"""

from ._tracker import FinishedHandler as FinishedHandler
from ._tracker import LostHandler as LostHandler
from ._tracker import LostSubmit as LostSubmit
from ._tracker import TrackedClient as TrackedClient
from ._tracker import Tracker as Tracker
from ._tracker import context_text as context_text


__all__ = [
    "FinishedHandler",
    "LostHandler",
    "LostSubmit",
    "TrackedClient",
    "Tracker",
    "context_text",
]
