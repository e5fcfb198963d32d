"""Every script in examples/ runs to completion and leaves nothing behind.

Each example runs as its own process (a driver that starts and stops its own
cluster), with the repository root first on its import path and its session
files under a private temporary directory. Afterwards no process of that
session may be alive and no new zray shared-memory segment may remain.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.py"))
SHM = Path("/dev/shm")


def _zray_segments():
    try:
        return {p.name for p in SHM.iterdir() if p.name.startswith("zray")}
    except OSError:
        return set()


def _pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _segments_in_use(names):
    """The names among ``names`` that a live process has mapped or open.

    A segment that some other, still running zray session uses is not a
    leak of the example's; one that no process holds is.
    """
    paths = {str(SHM / name): name for name in names}
    used = set()
    for pid in _pids():
        maps = _read(f"/proc/{pid}/maps")
        used.update(name for path, name in paths.items() if path in maps)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in paths:
                used.add(paths[target])
    return used


def _processes_mentioning(text):
    """Command lines of live processes that contain ``text``."""
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def _report(proc_or_exc):
    out = proc_or_exc.stdout or ""
    err = proc_or_exc.stderr or ""
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"


def test_there_are_examples():
    assert EXAMPLES, "examples/ has no scripts"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example(path):
    # A short private directory for the session's files (socket paths are
    # limited to ~107 bytes, so not pytest's long tmp_path).
    session_tmp = tempfile.mkdtemp(prefix="zx")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    env["ZRAY_TMPDIR"] = session_tmp
    before = _zray_segments()
    try:
        try:
            proc = subprocess.run([sys.executable, str(path)], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{path.name} did not finish in 60 s\n{_report(exc)}")
        assert proc.returncode == 0, (
            f"{path.name} exited with {proc.returncode}\n{_report(proc)}")

        leftover_procs = _processes_mentioning(session_tmp)
        assert not leftover_procs, (
            f"{path.name} left processes running:\n" + "\n".join(leftover_procs))

        new = _zray_segments() - before
        leaked = sorted(new - _segments_in_use(new))
        assert not leaked, f"{path.name} left shared memory behind: {leaked}\n{_report(proc)}"
    finally:
        shutil.rmtree(session_tmp, ignore_errors=True)
