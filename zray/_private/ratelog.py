"""Warnings that may come once per message, logged at most once a second per kind.

A process that reads messages from peers it does not control (the node
agent, the head) must not write a line, let alone a traceback, for each bad
one: a flood of junk would become a flood of log.  :class:`RateLimitedLog`
lets one line of each kind out per interval (and at most MAX_LINES of all
kinds) and counts the others into the next line of that kind; the first
time a distinct error (its type and the line that raised it) is seen, its
traceback goes with its line.

Owns: nothing but its counters.  Must not: decide what a problem is (callers
name the kind).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

INTERVAL = 1.0        # seconds between two lines of one kind
MAX_LINES = 10        # lines of all kinds together per interval (a flood of many kinds)
MAX_KINDS = 256       # kinds remembered (the oldest are forgotten past this)
MAX_TRACEBACKS = 32   # distinct errors logged with their traceback, ever
MAX_LINE = 400        # characters of a message kept (a peer's junk may be quoted in it)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.kinds: Dict[str, List[float]] = {}   # kind -> [next line's earliest time, held back]
        self.traced: Set[Tuple[str, str, int]] = set()
        self.window_end = 0.0     # the interval MAX_LINES counts lines in, and its count
        self.lines = 0

    def warning(self, kind: str, message: str, exc: Optional[BaseException] = None) -> bool:
        """Log ``message`` unless a line of ``kind`` went out within the interval (then
        it is counted); ``exc``'s traceback goes with it the first time that error is
        seen.  True if it was logged."""
        now = self.clock()
        entry = self.kinds.get(kind)
        if entry is not None and now < entry[0]:
            entry[1] += 1
            return False
        if entry is None:
            if len(self.kinds) >= MAX_KINDS:
                self.kinds.clear()  # a storm of distinct kinds: start counting afresh
            entry = self.kinds[kind] = [0.0, 0]
        if now >= self.window_end:
            self.window_end, self.lines = now + self.interval, 0
        if self.lines >= MAX_LINES:
            entry[1] += 1  # told with the next line of its kind
            return False
        self.lines += 1
        held = int(entry[1])
        entry[0], entry[1] = now + self.interval, 0
        if len(message) > MAX_LINE:
            message = message[:MAX_LINE] + "..."
        if held:
            message += f" (and {held} more like it held back)"
        self.logger.warning("%s", message, exc_info=self.first_traceback(exc))
        return True

    def refused(self, op: Any, sender: str, exc: BaseException) -> bool:
        """A message from ``sender`` refused (``op`` None: it did not even decode)."""
        return self.warning(f"refused {op.name if op is not None else 'junk'}",
                            f"refused a message from {sender}: {exc}")

    def failed(self, op: Any, exc: BaseException, trace: bool = True) -> bool:
        """``op``'s handler raised ``exc`` (its traceback the first time, if ``trace``)."""
        return self.warning(f"failed {op.name}",
                            f"{op.name} failed: {type(exc).__name__}: {exc}",
                            exc if trace else None)

    def first_traceback(self, exc: Optional[BaseException]) -> Optional[BaseException]:
        """``exc`` if its kind of error has not been logged with a traceback yet."""
        if exc is None or exc.__traceback__ is None or len(self.traced) >= MAX_TRACEBACKS:
            return None
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        signature = (type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        if signature in self.traced:
            return None
        self.traced.add(signature)
        return exc


_by_logger: Dict[str, RateLimitedLog] = {}


def limited(logger: logging.Logger) -> RateLimitedLog:
    """The process's rate-limited log for ``logger`` (made on first use)."""
    log = _by_logger.get(logger.name)
    if log is None:
        log = _by_logger[logger.name] = RateLimitedLog(logger)
    return log
