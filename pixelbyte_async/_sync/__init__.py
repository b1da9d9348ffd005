"""
The SDK for synchronous code: `SyncPixelByte` and `SyncJob`.

A facade over `PixelByte` on an event loop in a thread of its own (anyio's blocking
portal), loaded on first use: asyncio programs never import it.
"""

from ._client import SyncPixelByte as SyncPixelByte
from ._job import SyncJob as SyncJob


__all__ = ["SyncJob", "SyncPixelByte"]
