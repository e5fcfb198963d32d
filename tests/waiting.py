"""Waiting in tests for a condition that comes true later, with a deadline."""

import time

import psutil


def eventually(condition, within: float = 10.0) -> bool:
    """Whether ``condition()`` comes true before ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_pid_gone(pid, timeout=20.0):
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    assert not alive, f"process {pid} still runs {timeout}s later"
