"""Every example script runs to completion and leaves nothing behind."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


def _segments():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("zray")}
    except OSError:
        return set()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs(path):
    before = _segments()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, path], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=80)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert _segments() - before == set()
