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


def shutdown_leaving_nothing(ctx) -> None:
    """``zray.shutdown()`` of the session ``ctx`` (what ``zray.init`` returned), then
    check that none of its processes and no shared-memory segment of it is left."""
    import os

    import zray

    session_dir = ctx["session_dir"]
    children = [p for p in psutil.Process().children(recursive=True)
                if "zray" in " ".join(p.cmdline())]
    zray.shutdown()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"zray processes still alive: {alive}"
    tag = "zray_" + os.path.basename(session_dir)[-12:]
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(tag)]
