"""The supervisor of one submitted job: ``python -m zray._private.job_supervisor SPEC``.

::

    head ──Popen──▶ job_supervisor (zray in its command line; stdout: the job's log)
                        │ unpacks the working_dir archive (if any) into the cache
                        └─Popen, own process group──▶ /bin/sh -c ENTRYPOINT (the driver)

The head starts one per job and never waits on it: it polls the supervisor's
exit from its timer pass and reads what happened from ``result.json``.  The
supervisor owns the entrypoint's process group: on SIGTERM (``zray job
stop``, the head shutting down) or when its head is gone (it was reparented),
it sends SIGTERM to the group, SIGKILL after the grace period, and writes the
result.  When the entrypoint ends by itself, what it left running in its group
is ended the same way, so nothing of a job outlives it.

Owns: the job folder's ``driver.pid`` and ``result.json``.  Must not: talk to
the head (files only) or touch other jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

#: Seconds between SIGTERM and SIGKILL when a job is stopped (as Ray's default).
STOP_GRACE = float(os.environ.get("ZRAY_JOB_STOP_GRACE", 3.0))


def write_json(path: str, value: dict) -> None:
    """Atomically: a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def end_group(child: subprocess.Popen, grace: float) -> int:
    """SIGTERM the child's process group, SIGKILL what is left after ``grace``;
    the child's exit code."""
    signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()  # reap the leader, or it counts as a member for ever
        if not group_alive(child.pid):
            break
        time.sleep(0.05)
    else:
        signal_group(child.pid, signal.SIGKILL)
    return child.wait()


def working_dir(spec: dict) -> str:
    """The folder the entrypoint runs in: the unpacked archive, or the spec's ``cwd``."""
    if not spec.get("package"):
        return spec["cwd"]
    from zray._private.runtime_env import packaging

    path = spec["package_path"]
    with open(path, "rb") as f:
        data = f.read()
    try:
        return packaging.unpack(data, spec["package"], spec["cache_root"])
    finally:
        os.unlink(path)


def supervise(spec: dict, stop: List[bool]) -> dict:
    """Run the job to its end; what ``result.json`` says."""
    head_pid = spec["head_pid"]
    grace = float(spec.get("grace", STOP_GRACE))
    try:
        cwd = working_dir(spec)
    except (OSError, ValueError) as exc:  # packaging.PackageError is a ValueError
        print(f"zray: the job's working_dir could not be set up: {exc}", flush=True)
        return {"message": f"the job's working_dir could not be set up: {exc}"}
    if stop:
        return {"stopped": True}
    try:
        child = subprocess.Popen(spec["entrypoint"], shell=True, cwd=cwd,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        print(f"zray: the entrypoint could not start: {exc}", flush=True)
        return {"message": f"the entrypoint could not start: {exc}"}
    write_json(os.path.join(spec["job_dir"], "driver.pid"), {"pid": child.pid})
    stopped = False
    while True:
        try:
            code = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop or os.getppid() != head_pid:
            stopped = True
            code = end_group(child, grace)
            break
    if group_alive(child.pid):  # what the entrypoint left running goes with it
        end_group(child, min(grace, 1.0))
    return {"returncode": code, "stopped": stopped}


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    stop: List[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result = supervise(spec, stop)
    write_json(os.path.join(spec["job_dir"], "result.json"), result)


if __name__ == "__main__":
    main()
