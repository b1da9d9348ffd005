"""
Batches: many jobs under one budget, with a crash-safe journal.

`run_batch` runs a list of inputs (typed inputs, ``(slug, input)`` tuples or
``{"id", "model", "input"}`` mappings) under the client's job limit, waits for
them, downloads their outputs and yields one `BatchItem` per input as it finishes.

* **Budget guard.**  The cost is estimated before the first submit with the API's
  ``/estimate`` (your account's prices; the local price table only when the API
  cannot be asked, and the plan says so); a batch over *max_cost_micro_cents* is
  refused with `BudgetExceeded` before anything is paid for (or, with *fit*, runs
  the rows that fit, in order), and submitting stops as soon as the next job would
  cross the limit.  Submits are sent one at a time and every charge the API
  reports is counted, so racing workers cannot cross the limit.
* **Never pay twice.**  Every step is recorded in a SQLite journal (see
  `pixelbyte_async._journal`) before it happens.  Re-running the same batch after a
  crash (``kill -9`` included) re-attaches submitted jobs by id, skips finished
  ones and reconciles submits of unknown fate with `PixelByte.reconcile`.  A row
  whose submit's fate is unknown is never re-sent before its **settle horizon**
  (counted from the journaled start of the attempt, so it survives a crash) has
  passed with nothing found; other rows go on meanwhile.
  Only two lost submits of one model at once pause that model's new submits
  (a third could not be told apart), and so does one an earlier run left in
  flight, until it is settled; shown in `Batch.settling` with a countdown.
* **Audit.**  At the end, the account's jobs created during the run that no
  journal row claims and a lost submit may have made are listed with their cost
  (`BatchSummary.orphans`); other submitters' jobs are counted
  (`BatchSummary.others`).

The batch uses the client only through `pixelbyte_async._seams.BatchClient`.  Its
modules, each importing only those listed before it:

* ``_types``: the public values and errors (`BatchItem`, `BatchPlan`,
  `BatchSummary`, `BudgetExceeded` …) and which errors end the whole batch.
* ``_rows``: inputs normalised to an ``Entry`` with a stable key;
  `read_batch_file`.
* ``_budget``: ``Budget``: estimates, *fit*, charges net of refunds, the check
  before each submit, repricing.
* ``_outcomes``: ``Outcomes``: each row's result (the queue `Batch` iterates), jobs
  found and rows set aside, journaled; why submitting stopped.
* ``_outputs``: ``Outputs``: the files in *out_dir*, downloaded and checked.
* ``_unknown``: ``UnknownFates``: submits of unknown fate, settled by reconcile,
  and the per-model gate two of them at once hold.
* ``_plan``: ``Planner``: each row's action from its journal row, and the plan.
* ``_submits``: ``Submits``: sending rows one at a time, journaled before and
  after.
* ``_steps``: ``Steps``: one row from its job to its output (a worker's turn).
* ``_audit``: the closing audit.
* ``_resolve``: `resolve_batch_row`: a person settles a row set aside.
* ``_runner``: `Batch` (lifecycle, phases, workers, summary) and `run_batch`.
"""

from ._resolve import resolve_batch_row as resolve_batch_row
from ._rows import read_batch_file as read_batch_file
from ._runner import Batch as Batch
from ._runner import run_batch as run_batch
from ._types import BatchInput as BatchInput
from ._types import BatchInputError as BatchInputError
from ._types import BatchItem as BatchItem
from ._types import BatchItemStatus as BatchItemStatus
from ._types import BatchPlan as BatchPlan
from ._types import BatchSummary as BatchSummary
from ._types import BudgetExceeded as BudgetExceeded
from ._types import PlannedItem as PlannedItem
from ._types import Settling as Settling


__all__ = [
    "Batch",
    "BatchInput",
    "BatchInputError",
    "BatchItem",
    "BatchItemStatus",
    "BatchPlan",
    "BatchSummary",
    "BudgetExceeded",
    "PlannedItem",
    "Settling",
    "read_batch_file",
    "resolve_batch_row",
    "run_batch",
]
