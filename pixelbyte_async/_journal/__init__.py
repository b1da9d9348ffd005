"""
The batch journal: a crash-safe record of every input of a batch, in SQLite.

One row per input, written *before* anything is paid for, so a run killed at any
moment (``kill -9`` included) can be resumed without paying twice::

    planned ──> submitting ──> submitted ──> completed ──> downloaded
       ^            │                   ├──> failed  (refunded; retried on request)
       └────────────┘                   └──> cancelled
     (no job was created)     needs_attention: a submit of unknown fate that could
                              not be matched to one job; never re-sent automatically

``submitting`` is written (with the attempt's start time) right before the submit
request is sent and ``submitted`` (with the job id and cost) as soon as it returns,
so a row left in ``submitting`` is exactly "fate unknown": the next run reconciles
it with the API instead of re-sending it.

The database uses WAL mode.  Every commit survives the process being killed
(``synchronous=NORMAL``: the log is in the page cache); the ``submitting`` commit,
which guards a paid request, is also synced to the disk before the request is
sent (``synchronous=FULL`` for that one), so not even a power cut can send a row
twice.  A ``submitted`` lost to a power cut leaves the row ``submitting``: the
next run reconciles it.  ``submitting`` rows share synced commits in a worker
thread (a group commit), except a row alone on its model's wire, synced on the
loop at once while the disk syncs quickly; the calls that read every row run in
that thread, one at a time.  A one-row write (tens of microseconds: the writer holds
the file alone, and such commits wait for no disk) runs on the event loop, after
those already queued.  The journal never holds the API key.

One writer per journal file, however it is named, held until the writer closes it or
dies (``kill -9`` included):

* a lock file next to the *resolved* path (``<real path>.lock``), so a symlink or a
  ``x/../`` spelling finds the same lock;
* in the database itself: the writer opens with an exclusive SQLite lock, which only
  succeeds while no other connection has the file open, and then keeps its shared
  lock (WAL mode) for as long as it is open.  This holds even if the lock file is
  deleted or the directory is reached through another mount.  Readers (dry runs)
  still get in; they copy the journal into memory and let go of the file at once.
* hard-linked journals are refused: SQLite finds the ``-wal`` file by name, so two
  names of one database can each see a different log.

Only our own journals are used: an existing file must be an SQLite database with
our ``meta`` table.  An empty file (a truncated journal), a foreign database, or a
left-over ``-wal`` without its database is refused, never taken for a fresh
journal.  A new journal is built under a temporary name and moved into place, so
the journal path either does not exist or holds a complete journal.
"""

from ._errors import JournalError as JournalError
from ._record import Journal as Journal
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import STATES as STATES
from ._schema import JournalRow as JournalRow
from ._schema import LostAttempt as LostAttempt
from ._schema import State as State
from ._schema import read_rows as read_rows


__all__ = [
    "SCHEMA_VERSION",
    "STATES",
    "Journal",
    "JournalError",
    "JournalRow",
    "LostAttempt",
    "State",
    "read_rows",
]
