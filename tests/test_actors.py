"""Actors end to end, on real processes.

Most tests share one cluster (``zray.init(num_cpus=4)``).  The tests at the
end that need other init arguments (GPUs, custom resources) shut it down and
start their own; the shared fixture starts it again if a later test needs it.
"""

import asyncio
import concurrent.futures
import gc
import os
import threading
import time
import uuid

import psutil
import pytest
from waiting import wait_pid_gone

import zray
from zray import exceptions
from zray.object_ref import ObjectRef

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def _module_cluster():
    yield
    zray.shutdown()


@pytest.fixture
def cluster(_module_cluster):
    if not zray.is_initialized():
        zray.init(num_cpus=4)
    yield


def wait_until(predicate, what, timeout=20.0):
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def available_cpu():
    return zray.available_resources().get("CPU", 0.0)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ actor classes


@zray.remote(num_cpus=1)
class Heavy:
    def ping(self):
        return "pong"


@zray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def inc(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@zray.remote(num_cpus=0, max_restarts=0)
class Optioned:
    def __init__(self, tag):
        self.tag = tag

    def tag_of(self):
        return self.tag


class Plain:
    def __init__(self, x):
        self.x = x

    def double(self):
        return 2 * self.x


PlainActor = zray.remote(Plain)


@zray.remote
class Recorder:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)

    def items_so_far(self):
        return list(self.items)


@zray.remote
class MessageActor:
    def __init__(self):
        self.messages = []

    def add_message(self, message):
        self.messages.append(message)

    def get_and_clear_messages(self):
        messages = self.messages
        self.messages = []
        return messages


@zray.remote
class Forwarder:
    """Holds a handle to another actor and calls it from inside its own methods."""

    def __init__(self, target):
        self.target = target

    def forward(self, item):
        zray.get(self.target.add.remote(item))
        return "forwarded"

    def call_given(self, handle, by):
        return zray.get(handle.inc.remote(by))


@zray.remote
class Sleeper:
    def ready(self):
        return True

    def nap(self, seconds):
        time.sleep(seconds)
        return os.getpid()


@zray.remote(max_restarts=1)
class Fragile:
    def __init__(self, start):
        self.value = start

    def inc(self):
        self.value += 1
        return self.value

    def pid(self):
        return os.getpid()

    def crash(self):
        os._exit(1)


@zray.remote(max_concurrency=4)
class Gate:
    def __init__(self):
        # Passes only when four calls wait at once; a serial actor breaks it.
        self.barrier = threading.Barrier(4, timeout=20)

    def meet(self, i):
        self.barrier.wait()
        return i


@zray.remote
class AsyncActor:
    async def ready(self):
        return True

    async def nap(self, i):
        await asyncio.sleep(0.5)
        return i

    async def inc_other(self, other, by):
        return await other.inc.remote(by)

    async def await_boxed(self, boxed):
        return await boxed[0]


@zray.remote
class Splitter:
    @zray.method(num_returns=2)
    def split(self, x):
        return x, x * 2

    def whole(self, x):
        return x, x * 2


@zray.remote
class Faulty:
    def __init__(self):
        self.calls = 0

    def boom(self):
        self.calls += 1
        raise ValueError("bad value 42")

    def count(self):
        self.calls += 1
        return self.calls


@zray.remote
class BrokenInit:
    def __init__(self):
        raise RuntimeError("cannot open the thing")

    def ping(self):
        return "pong"


@zray.remote
class GpuActor:
    def visible(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES"), zray.get_gpu_ids()


@zray.remote
def echo(x):
    return x


@zray.remote
def push_messages(actor, worker_index, count):
    for i in range(count):
        actor.add_message.remote(f"Message {i} from worker {worker_index}.")
    return worker_index


@zray.remote
def push_pairs(recorder, caller, count):
    refs = [recorder.add.remote((caller, i)) for i in range(count)]
    zray.get(refs)
    return caller


@zray.remote
def bump(counter, by):
    return zray.get(counter.inc.remote(by))


@zray.remote
def bump_boxed(boxes, by):
    handle = zray.get(boxes[0])["counter"]
    return zray.get(handle.inc.remote(by))


@zray.remote
def make_counter(start):
    return Counter.remote(start)


@zray.remote
def give_back(handle):
    return handle


# ------------------------------------------------------------------ classes and options


def test_remote_class_with_and_without_options(cluster):
    assert zray.get(Counter.remote(3).inc.remote()) == 4
    assert zray.get(Optioned.remote("t").tag_of.remote()) == "t"


def test_remote_called_on_a_class(cluster):
    class Local:
        def __init__(self, x):
            self.x = x

        def double(self):
            return 2 * self.x

    assert zray.get(zray.remote(Local).remote(21).double.remote()) == 42


def test_remote_called_on_a_module_level_class(cluster):
    # The class is importable by name here (pytest put tests/ on sys.path), so
    # it is pickled by reference: workers must be able to import this module.
    assert zray.get(PlainActor.remote(21).double.remote()) == 42


def test_direct_instantiation_and_direct_method_call_raise():
    with pytest.raises(TypeError, match=r"Counter\.remote\(\)"):
        Counter()
    with pytest.raises(TypeError, match=r"\.remote\(\)"):
        PlainActor(1)


def test_direct_method_call_raises(cluster):
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"inc\.remote\(\)"):
        counter.inc()
    with pytest.raises(AttributeError, match="no_such_method"):
        counter.no_such_method  # noqa: B018


def test_options_then_remote(cluster):
    counter = Counter.options(num_cpus=0, max_restarts=0).remote(100)
    assert zray.get(counter.inc.remote(5)) == 105
    optioned = Optioned.options(name=unique("optioned")).remote("x")
    assert zray.get(optioned.tag_of.remote()) == "x"


def test_actor_with_no_cpus_leaves_every_cpu_free(cluster):
    before = zray.available_resources().get("CPU", 0)
    counter = Counter.options(num_cpus=0, max_restarts=0).remote(0)
    assert zray.get(counter.inc.remote(1)) == 1  # alive and placed
    assert zray.available_resources().get("CPU", 0) == before
    zray.kill(counter)


@zray.remote
class PinCounter:
    """Counts the PIN requests of its own worker."""

    def install(self):
        from zray._private import state
        from zray._private.protocol import Op

        client = state.client
        real_request = client.request
        self.pins = 0

        def counting(op, body, *raw, **kwargs):
            if op == Op.PIN:
                self.pins += 1
            return real_request(op, body, *raw, **kwargs)

        client.request = counting

    def total(self, array):
        return int(array.sum())

    def count(self):
        return self.pins


def test_shared_arguments_arrive_pinned(cluster):
    import numpy as np

    counter = PinCounter.remote()
    zray.get(counter.install.remote())
    big = zray.put(np.ones(1_000_000, dtype=np.int64))  # in shared memory
    assert zray.get(counter.total.remote(big)) == 1_000_000
    assert zray.get(counter.count.remote()) == 0  # no PIN round trip to read it
    zray.kill(counter)


def test_bad_actor_options_fail_in_callers_line():
    with pytest.raises(ValueError, match="max_concurrency"):
        Counter.options(max_concurrency=0)
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever")


def test_method_calls_return_object_refs(cluster):
    counter = Counter.remote()
    ref = counter.inc.remote()
    assert isinstance(ref, ObjectRef)
    assert zray.get(ref) == 1


# ------------------------------------------------------------------ ordering and state


def test_calls_from_one_caller_run_in_order_with_shared_state(cluster):
    recorder = Recorder.remote()
    refs = [recorder.add.remote(i) for i in range(200)]
    assert zray.get(recorder.items_so_far.remote()) == list(range(200))
    assert zray.get(refs) == [None] * 200


def test_different_actors_run_in_parallel(cluster):
    a, b = Sleeper.remote(), Sleeper.remote()
    assert zray.get([a.ready.remote(), b.ready.remote()]) == [True, True]
    start = time.monotonic()
    pids = zray.get([a.nap.remote(1.0), b.nap.remote(1.0)])
    elapsed = time.monotonic() - start
    assert pids[0] != pids[1]
    assert elapsed < 1.8, f"two 1 s calls on two actors took {elapsed:.2f}s"


def test_ordering_per_caller_under_many_callers(cluster):
    recorder = Recorder.remote()
    callers = zray.get([push_pairs.remote(recorder, c, 50) for c in range(4)])
    assert callers == [0, 1, 2, 3]
    items = zray.get(recorder.items_so_far.remote())
    assert len(items) == 200
    for caller in range(4):
        assert [i for c, i in items if c == caller] == list(range(50))


# ------------------------------------------------------------------ handles travel


def test_message_actor_handle_passed_to_tasks(cluster):
    message_actor = MessageActor.remote()
    workers, per_worker = 3, 20
    assert sorted(zray.get([push_messages.remote(message_actor, j, per_worker)
                            for j in range(workers)])) == [0, 1, 2]
    received = []

    def all_arrived():
        received.extend(zray.get(message_actor.get_and_clear_messages.remote()))
        return len(received) >= workers * per_worker

    wait_until(all_arrived, "every worker's messages")
    assert len(received) == workers * per_worker
    for j in range(workers):
        mine = [m for m in received if m.endswith(f"from worker {j}.")]
        assert mine == [f"Message {i} from worker {j}." for i in range(per_worker)]


def test_handle_passed_to_tasks_every_copy_calls(cluster):
    counter = Counter.remote()
    results = zray.get([bump.remote(counter, 1) for _ in range(10)])
    assert sorted(results) == list(range(1, 11))
    assert zray.get(counter.get.remote()) == 10


def test_handle_passed_to_other_actors(cluster):
    recorder = Recorder.remote()
    forwarder = Forwarder.remote(recorder)
    assert zray.get([forwarder.forward.remote(i) for i in range(5)]) == ["forwarded"] * 5
    assert zray.get(recorder.items_so_far.remote()) == [0, 1, 2, 3, 4]
    counter = Counter.remote(10)
    assert zray.get(forwarder.call_given.remote(counter, 5)) == 15
    assert zray.get(counter.get.remote()) == 15


def test_handle_returned_from_task(cluster):
    made = zray.get(make_counter.remote(10))
    assert isinstance(made, zray.ActorHandle)
    assert zray.get(made.inc.remote()) == 11
    assert zray.get(bump.remote(made, 2)) == 13

    counter = Counter.remote(0)
    echoed = zray.get(give_back.remote(counter))
    assert echoed == counter
    zray.get(echoed.inc.remote())
    assert zray.get(counter.get.remote()) == 1


def test_handle_stored_in_put_object(cluster):
    counter = Counter.remote(0)
    box = zray.put({"counter": counter})
    del counter
    gc.collect()
    from_box = zray.get(box)["counter"]
    assert zray.get(from_box.inc.remote()) == 1
    assert zray.get(bump_boxed.remote([box], 10)) == 11
    assert zray.get(from_box.get.remote()) == 11


# ------------------------------------------------------------------ resources


def test_num_cpus_option_holds_cpu(cluster):
    total = zray.cluster_resources()["CPU"]
    wait_until(lambda: available_cpu() == total, "every CPU free")
    holder = Counter.options(num_cpus=1).remote()
    assert zray.get(holder.inc.remote()) == 1
    assert available_cpu() == total - 1
    zray.kill(holder)
    wait_until(lambda: available_cpu() == total, "the killed actor's CPU back")


def test_actor_that_cannot_fit_never_starts(cluster):
    stuck = Counter.options(resources={"Nope": 1}).remote()
    with pytest.raises(exceptions.GetTimeoutError):
        zray.get(stuck.inc.remote(), timeout=1)


# ------------------------------------------------------------------ names and lifetime


def test_named_actor_lookup_and_errors(cluster):
    name = unique("named")
    counter = Counter.options(name=name).remote(5)
    found = zray.get_actor(name)
    assert found == counter
    assert zray.get(found.inc.remote()) == 6
    assert zray.get(counter.get.remote()) == 6
    with pytest.raises(ValueError, match=name):
        Counter.options(name=name).remote()
    missing = unique("missing")
    with pytest.raises(ValueError, match=missing):
        zray.get_actor(missing)


def test_get_if_exists_returns_the_named_actor(cluster):
    name = unique("shared")
    first = Counter.options(name=name, get_if_exists=True).remote(1)
    second = Counter.options(name=name, get_if_exists=True).remote(100)
    assert first == second
    assert zray.get(second.inc.remote()) == 2


def test_detached_actor_outlives_its_handle_until_killed(cluster):
    name = unique("detached")
    handle = Counter.options(name=name, lifetime="detached").remote(7)
    pid = zray.get(handle.pid.remote())
    del handle
    gc.collect()
    zray.available_resources()  # a round trip: the agent has seen the handle go
    again = zray.get_actor(name)
    assert zray.get(again.inc.remote()) == 8
    assert zray.get(again.pid.remote()) == pid
    assert psutil.pid_exists(pid)

    zray.kill(again)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(again.inc.remote())
    wait_pid_gone(pid)

    def name_released():
        try:
            zray.get_actor(name)
        except ValueError:
            return True
        return False

    wait_until(name_released, "the killed actor's name to be released")


def test_actor_exits_and_frees_resources_when_every_handle_is_gone(cluster):
    total = zray.cluster_resources()["CPU"]
    wait_until(lambda: available_cpu() == total, "every CPU free")
    counter = Counter.options(num_cpus=1).remote()
    pid = zray.get(counter.pid.remote())
    assert available_cpu() == total - 1
    del counter
    gc.collect()
    wait_pid_gone(pid)
    wait_until(lambda: available_cpu() == total, "the actor's CPU back")


def test_queued_calls_finish_before_a_dropped_actor_exits(cluster):
    recorder = Recorder.remote()
    refs = [recorder.add.remote(i) for i in range(20)]
    last = recorder.items_so_far.remote()
    del recorder
    gc.collect()
    assert zray.get(last) == list(range(20))
    assert zray.get(refs) == [None] * 20


# ------------------------------------------------------------------ failures


def test_max_restarts_restarts_with_fresh_state(cluster):
    fragile = Fragile.remote(10)
    assert zray.get(fragile.inc.remote()) == 11
    assert zray.get(fragile.inc.remote()) == 12
    first_pid = zray.get(fragile.pid.remote())
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(fragile.crash.remote())
    assert zray.get(fragile.inc.remote()) == 11  # rebuilt from the constructor's args
    assert zray.get(fragile.pid.remote()) != first_pid
    # The one restart is spent: the next crash is final.
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(fragile.crash.remote())
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(fragile.inc.remote())


def test_crash_without_restarts_is_final(cluster):
    fragile = Fragile.options(max_restarts=0).remote(0)
    pid = zray.get(fragile.pid.remote())
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(fragile.crash.remote())
    for _ in range(3):
        with pytest.raises(exceptions.ActorDiedError):
            zray.get(fragile.inc.remote())
    wait_pid_gone(pid)


def test_method_error_is_returned_and_actor_lives_on(cluster):
    faulty = Faulty.remote()
    with pytest.raises(ValueError, match="bad value 42") as info:
        zray.get(faulty.boom.remote())
    assert isinstance(info.value, exceptions.TaskError)
    assert isinstance(info.value, ValueError)
    assert zray.get(faulty.count.remote()) == 2  # same state: the failing call counted


def test_constructor_error_makes_every_call_fail(cluster):
    broken = BrokenInit.remote()
    early = broken.ping.remote()  # queued before the constructor ran
    with pytest.raises(exceptions.ActorDiedError, match="cannot open the thing"):
        zray.get(early)
    with pytest.raises(exceptions.ActorDiedError, match="cannot open the thing"):
        zray.get(broken.ping.remote())


def test_kill_makes_later_calls_fail(cluster):
    counter = Counter.remote()
    pid = zray.get(counter.pid.remote())
    zray.kill(counter)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(counter.inc.remote())
    wait_pid_gone(pid)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(counter.inc.remote())


def test_an_actor_killed_before_it_came_up_gives_its_cpu_back(cluster):
    wait_until(lambda: available_cpu() == 4, "the node to be idle")
    before_placed = Heavy.remote()           # killed right after .remote()
    zray.kill(before_placed)
    running = [Heavy.remote() for _ in range(4)]
    zray.get([h.ping.remote() for h in running])
    waiting = Heavy.remote()                 # no CPU free: waits, then is killed
    zray.kill(waiting)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(waiting.ping.remote(), timeout=30)
    for handle in running:
        zray.kill(handle)
    wait_until(lambda: available_cpu() == 4, "every CPU back")


def test_kill_rejects_non_handles(cluster):
    with pytest.raises(TypeError):
        zray.kill("not an actor")


# ------------------------------------------------------------------ concurrency


def test_threaded_actor_runs_max_concurrency_calls_at_once(cluster):
    gate = Gate.remote()
    assert zray.get([gate.meet.remote(i) for i in range(4)]) == [0, 1, 2, 3]


def test_async_actor_runs_calls_concurrently(cluster):
    actor = AsyncActor.remote()
    assert zray.get(actor.ready.remote())
    start = time.monotonic()
    assert zray.get([actor.nap.remote(i) for i in range(10)]) == list(range(10))
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"ten 0.5 s naps took {elapsed:.2f}s: not concurrent"


def test_await_refs_inside_async_actor(cluster):
    actor = AsyncActor.remote()
    counter = Counter.remote(1)
    assert zray.get(actor.inc_other.remote(counter, 4)) == 5
    assert zray.get(actor.await_boxed.remote([echo.remote("from a task")])) == "from a task"


def test_await_refs_in_driver_asyncio(cluster):
    counter = Counter.remote(0)

    async def main():
        first = await counter.inc.remote()
        many = await asyncio.gather(*[echo.remote(i) for i in range(5)])
        return first, many

    assert asyncio.run(main()) == (1, [0, 1, 2, 3, 4])


def test_ref_future(cluster):
    future = echo.remote(7).future()
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == 7
    failing = Faulty.remote().boom.remote().future()
    assert isinstance(failing.exception(timeout=30), ValueError)


def test_method_num_returns(cluster):
    splitter = Splitter.remote()
    first, second = splitter.split.remote(3)
    assert zray.get([first, second]) == [3, 6]
    assert zray.get(splitter.whole.remote(3)) == (3, 6)
    one, two = splitter.whole.options(num_returns=2).remote(4)
    assert zray.get([one, two]) == [4, 8]


# ------------------------------------------------------------------ other init arguments
# These run on clusters of their own, after the shared one is stopped.


@pytest.fixture
def gpu_cluster():
    zray.shutdown()
    zray.init(num_cpus=2, num_gpus=2, resources={"Custom": 2})
    yield
    zray.shutdown()


def test_num_gpus_option_assigns_devices(gpu_cluster):
    first = GpuActor.options(num_gpus=1).remote()
    second = GpuActor.options(num_gpus=1).remote()
    (cuda_a, ids_a), (cuda_b, ids_b) = zray.get([first.visible.remote(),
                                                  second.visible.remote()])
    assert {cuda_a, cuda_b} == {"0", "1"}
    assert ids_a == [int(cuda_a)] and ids_b == [int(cuda_b)]
    assert zray.available_resources().get("GPU", 0.0) == 0.0
    zray.kill(first)
    wait_until(lambda: zray.available_resources().get("GPU", 0.0) == 1.0, "a GPU back")


def test_custom_resources_option(gpu_cluster):
    assert zray.cluster_resources()["Custom"] == 2
    holder = Counter.options(resources={"Custom": 1}).remote()
    assert zray.get(holder.inc.remote()) == 1
    assert zray.available_resources()["Custom"] == 1
    too_big = Counter.options(resources={"Custom": 2}).remote()
    with pytest.raises(exceptions.GetTimeoutError):
        zray.get(too_big.inc.remote(), timeout=1)
    del holder
    gc.collect()
    # It starts once the first is gone, and runs the call that timed out first.
    assert zray.get(too_big.inc.remote(), timeout=30) == 2
