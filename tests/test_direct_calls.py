"""Actor calls on the direct path (caller straight to the actor's worker), end to end.

One session for the module (``zray.init(num_cpus=2)``).  Each test first
makes sure its caller has taken the agent's offer (``direct_to``), then
checks that what the agent path guarantees holds on the direct one: order
per caller, ref arguments, large results, errors, cancellation, worker
death with and without retries, reference counts.
"""

import os
import signal
import time

import numpy as np
import pytest
from waiting import eventually, shutdown_leaving_nothing, wait_pid_gone

import zray
from zray import exceptions
from zray._private import state

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def session():
    ctx = zray.init(num_cpus=2)
    yield ctx
    shutdown_leaving_nothing(ctx)


def direct_to(actor) -> bool:
    """Call ``actor`` until this driver calls it directly (the agent offers the
    path after a call, once nothing else is queued for it)."""
    channels = state.client.direct.channels

    def taken() -> bool:
        zray.get(actor.__ray_ready__.remote())
        return actor._actor_id in channels
    return eventually(taken, within=10)


@zray.remote
class Log:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return len(self.items)

    def items_so_far(self):
        return list(self.items)

    def pid(self):
        return os.getpid()

    def fail(self, text):
        raise ValueError(text)

    def big(self, n):
        return np.arange(n, dtype=np.int64)

    def nested(self, value):
        return [zray.put(value)]

    def nap(self, seconds):
        time.sleep(seconds)
        return seconds

    @zray.method(num_returns="streaming")
    def count_to(self, n):
        for i in range(n):
            yield i


@zray.remote
def slow_value(value, seconds):
    time.sleep(seconds)
    return value


def test_calls_go_direct_and_keep_order_with_ref_arguments(session):
    log = Log.remote()
    assert direct_to(log)
    late = slow_value.remote("second", 0.5)
    refs = [log.add.remote("first"), log.add.remote(late), log.add.remote("third")]
    assert zray.get(refs) == [1, 2, 3]
    assert zray.get(log.items_so_far.remote()) == ["first", "second", "third"]
    assert log._actor_id in state.client.direct.channels  # the calls went direct


def test_errors_large_results_and_refs_inside_results(session):
    log = Log.remote()
    assert direct_to(log)
    with pytest.raises(ValueError, match="no good"):
        zray.get(log.fail.remote("no good"))
    array = zray.get(log.big.remote(1 << 18))  # 2 MiB: shared memory, pushed by the agent
    assert array.shape == (1 << 18,) and array[-1] == (1 << 18) - 1
    [inner] = zray.get(log.nested.remote({"k": 1}))
    assert zray.get(inner) == {"k": 1}


def test_many_calls_leave_no_objects_behind(session):
    log = Log.remote()
    assert direct_to(log)
    before = state.client.query("store")["objects"]
    for i in range(300):
        assert zray.get(log.add.remote(i)) == i + 1
    refs = [log.add.remote(i) for i in range(300)]
    assert zray.get(refs)[-1] == 600
    del refs
    assert eventually(lambda: state.client.query("store")["objects"] <= before + 2)


def test_cancel_a_call_queued_behind_a_running_one(session):
    log = Log.remote()
    assert direct_to(log)
    running = log.nap.remote(1.0)
    queued = log.add.remote("never")
    zray.cancel(queued)
    with pytest.raises(exceptions.TaskCancelledError):
        zray.get(queued)
    assert zray.get(running) == 1.0
    assert zray.get(log.items_so_far.remote()) == []


def test_worker_death_fails_calls_without_retries_then_calls_go_on(session):
    log = Log.options(max_restarts=1).remote()
    assert direct_to(log)
    pid = zray.get(log.pid.remote())
    running = log.nap.remote(30)
    queued = log.add.remote("lost")
    os.kill(pid, signal.SIGKILL)
    for ref in (running, queued):
        with pytest.raises(exceptions.ActorDiedError):
            zray.get(ref, timeout=20)
    wait_pid_gone(pid)
    # Restarted: calls go through the agent, then direct again to the new worker.
    assert zray.get(log.add.remote("after"), timeout=20) == 1
    assert direct_to(log)
    assert zray.get(log.pid.remote()) != pid


def test_worker_death_with_task_retries_runs_calls_again(session):
    log = Log.options(max_restarts=1, max_task_retries=2).remote()
    assert direct_to(log)
    pid = zray.get(log.pid.remote())
    running = log.nap.remote(1)
    queued = [log.add.remote(i) for i in range(3)]
    os.kill(pid, signal.SIGKILL)
    assert zray.get(queued, timeout=20) == [1, 2, 3]  # run again on the new worker
    assert zray.get(running, timeout=20) == 1


def test_killed_actor_fails_later_calls(session):
    log = Log.remote()
    assert direct_to(log)
    zray.kill(log)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(log.add.remote(1), timeout=20)
    assert eventually(lambda: log._actor_id not in state.client.direct.channels)


@zray.remote
class AsyncLog:
    def __init__(self):
        self.count = 0

    async def add(self, n):
        self.count += n
        return self.count


@zray.remote(max_concurrency=4)
class Threaded:
    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.count = 0

    def add(self, n):
        with self.lock:
            self.count += n
            return self.count


def test_async_and_threaded_actors(session):
    for cls in (AsyncLog, Threaded):
        actor = cls.remote()
        assert direct_to(actor)
        assert sorted(zray.get([actor.add.remote(1) for _ in range(50)])) == list(range(1, 51))


@zray.remote
def call_from_a_task(actor, n):
    from zray._private import state as worker_state

    out = [zray.get(actor.add.remote(i)) for i in range(n)]
    return out, actor._actor_id in worker_state.client.direct.channels


def test_a_task_calls_an_actor_directly(session):
    log = Log.remote()
    out, direct = zray.get(call_from_a_task.remote(log, 20))
    assert out == list(range(1, 21))
    assert direct


def test_generator_calls(session):
    log = Log.remote()
    assert direct_to(log)
    for _ in range(20):  # its items may reach the agent before the call's SUBMIT
        assert [zray.get(ref) for ref in log.count_to.remote(5)] == [0, 1, 2, 3, 4]


def test_an_answer_does_not_wait_for_the_long_call_behind_it(session):
    log = Log.remote()
    assert direct_to(log)
    for _ in range(5):
        quick = log.add.remote("quick")
        slow = log.nap.remote(3)
        assert zray.get(quick, timeout=2) >= 1  # answers are batched, but not held
        zray.cancel(slow)


@zray.remote
def call_then_return(actor, value):
    zray.get(actor.add.remote("from a task"))
    return value


def test_a_call_is_sent_once_its_arguments_are_ready(session):
    """The argument's task calls the same actor: had the call gone to the actor
    before its argument was ready, the actor would wait for a task that waits
    for the actor."""
    log = Log.remote()
    assert direct_to(log)
    made = call_then_return.remote(log, "made")
    assert zray.get(log.add.remote(made), timeout=20) == 2
    assert zray.get(log.items_so_far.remote()) == ["from a task", "made"]
