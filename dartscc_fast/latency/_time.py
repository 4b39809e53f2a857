"""The timestamp the latency tables record (``meta['date']``, ``meta['merged']``)."""
from __future__ import annotations

import datetime


def utc_now() -> str:
    """Now, in UTC to the second, as ISO 8601 (``2025-01-31T12:00:00+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
