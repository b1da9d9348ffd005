"""`LedgerError`: a ledger file that cannot be used as one."""

from __future__ import annotations

from pixelbyte_async._errors import PixelByteError


__all__ = ["LedgerError"]


class LedgerError(PixelByteError):
    """
    The ledger's file is not one this SDK can use, or stays locked.

    Another program's file, a newer schema, or another process holding its lock
    for longer than a few seconds.  Raised before a submit is sent: nothing was
    paid for.

    .. versionadded:: 0.3.0
    """
