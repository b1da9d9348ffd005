# ruff: noqa: PLC0414 -- explicit `Name as Name` re-exports are the house style
"""
Test your PixelByte code without the network: `FakePixelByte`, a local fake API.

`FakePixelByte` is a real HTTP server on ``127.0.0.1`` that speaks the PixelByte API
(``/v1/jobs``, ``/v1/uploads``, ``/v1/models``, ``/v1/providers``, ``/v1/catalog``),
serves outputs from a second origin like the real CDN, runs jobs on a virtual clock,
records every request and every cent, and fails on command:

.. code-block:: python

    from pixelbyte_async.testing import Fault, FakePixelByte, JobScript

    async with FakePixelByte() as fake:
        fake.script_next(JobScript(outcome="failed"))
        fake.inject(Fault.status(503, "PUBSUB_PUBLISH_FAILED"), path="/v1/jobs/submit")
        ...  # run your code against fake.url with fake.api_key and clock=fake.clock
        fake.advance(300)
        assert fake.ledger.double_charged() == []

It also runs as a sandbox process (the same as ``pixelbyte-async sandbox``)::

    python -m pixelbyte_async.testing --port 8765 --time-scale 10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._fake._faults import Fault as Fault
from ._fake._faults import FaultHandle as FaultHandle
from ._fake._jobs import FakeJob as FakeJob
from ._fake._jobs import FakeUpload as FakeUpload
from ._fake._jobs import JobScript as JobScript
from ._fake._records import CdnRequest as CdnRequest
from ._fake._records import Ledger as Ledger
from ._fake._records import LedgerEntry as LedgerEntry
from ._fake._records import RecordedRequest as RecordedRequest
from ._fake._records import WebhookDelivery as WebhookDelivery
from ._fake._server import SANDBOX_API_KEY as SANDBOX_API_KEY
from ._fake._server import FakePixelByte as FakePixelByte
from ._fake._util import input_fingerprint as input_fingerprint


__all__ = [
    "SANDBOX_API_KEY",
    "CdnRequest",
    "FakeJob",
    "FakePixelByte",
    "FakeUpload",
    "Fault",
    "FaultHandle",
    "JobScript",
    "Ledger",
    "LedgerEntry",
    "RecordedRequest",
    "WebhookDelivery",
    "input_fingerprint",
    "main",
]


_PROG = "python -m pixelbyte_async.testing"


def _parser() -> argparse.ArgumentParser:
    """The options, shared with ``pixelbyte-async sandbox`` (one definition)."""
    from ._fake._process import _sandbox_parser  # noqa: PLC0415 -- only the process parses options

    return _sandbox_parser(_PROG)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the fake server in the foreground until Ctrl-C (or SIGTERM).

    It prints the base URL and the (sandbox, not secret) API key as
    ``PIXELBYTE_BASE_URL=...`` and ``PIXELBYTE_API_KEY=...`` lines.  It takes the
    options of ``pixelbyte-async sandbox`` (the same code): ``--help`` lists them.

    Args:
        argv: Command-line arguments without the program name; default
            ``sys.argv[1:]``.

    Returns:
        The exit status: 0 after a clean stop; 2 for a bad option; 15 when its
        address cannot be bound (port in use), with one line saying so.

    """
    from ._fake._process import _sandbox_main  # noqa: PLC0415 -- (same)

    return _sandbox_main(argv, prog=_PROG)


if __name__ == "__main__":
    sys.exit(main())
