"""A one-CPU node: blocked workers lend their CPU; output reaches the driver."""

import os
import subprocess
import sys
import textwrap

import pytest

import zray

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recursion_deeper_than_cpu_count():
    zray.init(num_cpus=1)
    try:
        @zray.remote
        def factorial(n):
            if n <= 1:
                return 1
            return n * zray.get(factorial.remote(n - 1))

        assert zray.get(factorial.remote(6)) == 720
    finally:
        zray.shutdown()


def test_print_in_task_reaches_driver_with_prefix():
    script = textwrap.dedent("""
        import zray
        zray.init(num_cpus=1)

        @zray.remote
        def speak():
            print("hello from a task")
            return 1

        zray.get(speak.remote())
        zray.shutdown()
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert "speak pid=" in out.stdout and "hello from a task" in out.stdout


def test_gpu_ids_and_visible_devices():
    zray.init(num_cpus=2, num_gpus=2)
    try:
        @zray.remote(num_gpus=1)
        def gpu():
            return zray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

        ids, visible = zray.get(gpu.remote())
        assert len(ids) == 1 and visible == str(ids[0])
    finally:
        zray.shutdown()


def test_shutdown_leaves_nothing_behind():
    import psutil

    ctx = zray.init(num_cpus=1)
    session_dir = ctx["session_dir"]
    children = [p for p in psutil.Process().children(recursive=True)
                if "zray" in " ".join(p.cmdline())]
    assert len(children) >= 3  # head, agent, worker template (and its workers)
    zray.shutdown()
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    assert not os.path.exists(session_dir)
    tag = "zray_" + os.path.basename(session_dir)[-12:]
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(tag)]
