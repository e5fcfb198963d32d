"""Reading what a starting process says on its start-up pipe.

A head started with ``--ready-fd`` writes lines there (``bound ...``,
``dashboard URL`` or ``dashboard-failed WHY``, ``joined NODE``); these read
them.  No zray imports: services and tests use it alike.
"""

from __future__ import annotations

import os
import select
import time
from typing import List, Optional, Tuple


def read_lines(fd: int, until: str, timeout: float) -> List[str]:
    """Lines from a start-up pipe until one starting with ``until`` (or the
    pipe's end, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    pending = b""
    lines: List[str] = []
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        pending += chunk
        *done, pending = pending.split(b"\n")
        lines += [line.decode(errors="replace") for line in done]
        if any(line.startswith(until) for line in lines):
            break
    return lines


def dashboard_url_from(lines: List[str]) -> Tuple[Optional[str], str]:
    """``(URL, "")`` from a head's ``dashboard URL`` line, or ``(None, why not)``."""
    for line in lines:
        if line.startswith("dashboard "):
            return line.split(" ", 1)[1], ""
        if line.startswith("dashboard-failed"):
            return None, f"the dashboard could not start: {line.split(' ', 1)[-1]}"
    return None, "the head did not say where its dashboard listens"
