"""Waiting in tests for a condition that comes true later, with a deadline."""

import time


def eventually(condition, within: float = 10.0) -> bool:
    """Whether ``condition()`` comes true before ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
