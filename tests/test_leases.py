"""Tasks on leased workers (the caller sends them straight to a worker its
agent lent it), end to end.

One session for the module (``zray.init(num_cpus=2)``).  Each test first
makes sure the driver holds a lease for the function (``leased``), then
checks what the agent path guarantees: results and errors, retries after
the worker dies, cancellation, CPU lending while a task waits, reference
counts, and that the agent takes the worker back when others need it or
it sits idle.
"""

import os
import signal
import time

import pytest
from waiting import eventually, shutdown_leaving_nothing, wait_pid_gone

import zray
from zray import exceptions
from zray._private import state
from zray._private.agent.leases import LEASE_IDLE

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def session():
    ctx = zray.init(num_cpus=2)
    yield ctx
    shutdown_leaving_nothing(ctx)


def leased(fn, *args) -> bool:
    """Run ``fn`` until this driver holds a lease for it."""
    leases = state.client.direct.leases

    def taken() -> bool:
        zray.get(fn.remote(*args))
        return fn._fid in leases
    return eventually(taken, within=10)


def cpus() -> float:
    return zray.available_resources().get("CPU", 0)


@zray.remote
def echo(value):
    return value


@zray.remote
def fail(text):
    raise ValueError(text)


@zray.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@zray.remote
def pid():
    return os.getpid()


@zray.remote(max_retries=1)
def die_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"


@zray.remote
def child(i):
    return i * 2


@zray.remote
def parent(n):
    return sum(zray.get([child.remote(i) for i in range(n)]))


def test_tasks_go_to_the_leased_worker(session):
    assert leased(echo, 0)
    assert [zray.get(echo.remote(i)) for i in range(200)] == list(range(200))
    assert zray.get([echo.remote(i) for i in range(500)]) == list(range(500))
    assert echo._fid in state.client.direct.leases


def test_errors_and_large_results(session):
    assert leased(echo, 0)
    for _ in range(3):  # a task that fails may lend its worker too
        with pytest.raises(ValueError, match="boom"):
            zray.get(fail.remote("boom"))
    with pytest.raises(ValueError, match="boom"):
        zray.get(fail.remote("boom"))
    big = b"x" * (1 << 20)  # shared memory: pushed by the agent, not answered directly
    assert zray.get(echo.remote(big)) == big


def test_a_leased_task_waiting_on_its_children_lends_its_cpu(session):
    assert leased(parent, 1)
    for _ in range(5):
        assert zray.get(parent.remote(8), timeout=20) == sum(i * 2 for i in range(8))


def test_cancel_a_leased_task(session):
    assert leased(nap, 0)
    ref = nap.remote(20)
    time.sleep(0.2)
    zray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        zray.get(ref, timeout=10)


def test_a_worker_that_dies_on_a_lease_runs_the_task_again(session, tmp_path):
    assert leased(die_once, str(tmp_path / "warm"))  # the first call leaves the marker...
    marker = str(tmp_path / "once")
    assert die_once._fid in state.client.direct.leases
    assert zray.get(die_once.remote(marker), timeout=20) == "second try"
    assert eventually(lambda: cpus() == 2.0, within=10)


def test_the_worker_comes_back_when_others_wait_or_when_idle(session):
    assert leased(echo, 0)
    # Two long tasks of another function need both CPUs: the lease goes.
    assert zray.get([nap.remote(0.5), nap.remote(0.5)], timeout=20) == [0.5, 0.5]
    assert leased(echo, 0)
    assert eventually(lambda: echo._fid not in state.client.direct.leases,
                      within=LEASE_IDLE + 5)
    assert eventually(lambda: cpus() == 2.0, within=5)


def test_many_leased_tasks_leave_no_objects_behind(session):
    assert leased(echo, 0)
    before = state.client.query("store")["objects"]
    for i in range(300):
        assert zray.get(echo.remote(i)) == i
    refs = [echo.remote(i) for i in range(300)]
    assert zray.get(refs)[-1] == 299
    del refs
    assert eventually(lambda: state.client.query("store")["objects"] <= before + 2)


@zray.remote
def leased_in_a_task(n):
    from zray._private import state as worker_state

    out = [zray.get(echo.remote(i)) for i in range(n)]
    return out, echo._fid in worker_state.client.direct.leases


def test_a_task_holds_a_lease_of_its_own(session):
    out, held = zray.get(leased_in_a_task.remote(30), timeout=30)
    assert out == list(range(30))
    assert held


@zray.remote
def napper(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_force_cancel_of_a_leased_task_ends_its_worker(session):
    assert leased(napper, 0)
    worker = zray.get(napper.remote(0))  # the leased worker
    ref = napper.remote(20)
    time.sleep(0.2)
    zray.cancel(ref, force=True)
    with pytest.raises(exceptions.TaskCancelledError):
        zray.get(ref, timeout=10)
    wait_pid_gone(worker)
    assert eventually(lambda: cpus() == 2.0, within=10)
