"""Ray programs' tasks and actors, end to end on one shared cluster.

Arguments bound at ``.remote()``, retries of application errors, the
options that reach the node (memory, runtime_env, strategies), actors'
call retries, pending-call limits, names in namespaces, the user's class
kept by the decorator, concurrency groups, ``exit_actor`` and ``async def``
tasks.
"""

import asyncio
import atexit
import os
import threading
import time
import uuid

import pytest
from waiting import wait_pid_gone

import zray
from zray import exceptions
from zray.actor import exit_actor

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    zray.init(num_cpus=4)
    yield
    zray.shutdown()


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def count_lines(path):
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def note(path, text="x"):
    with open(path, "a") as f:
        f.write(text + "\n")


# ------------------------------------------------------------------ binding


@zray.remote
def two(a, b=10, *, scale=1):
    return (a + b) * scale


@zray.remote
def flexible(*args, **kwargs):
    return len(args), sorted(kwargs)


@zray.remote
class Shape:
    def __init__(self, sides, name="shape"):
        self.sides = sides
        self.name = name

    def describe(self, prefix, *, upper=False):
        text = f"{prefix}{self.name}:{self.sides}"
        return text.upper() if upper else text


def test_arguments_are_bound_in_the_callers_line():
    with pytest.raises(TypeError, match="too many positional"):
        two.remote(1, 2, 3)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        two.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        two.remote(1, nope=2)
    with pytest.raises(TypeError, match=r"Shape\(\) missing"):
        Shape.remote()
    shape = Shape.remote(3, name="tri")
    with pytest.raises(TypeError, match=r"Shape.describe\(\) missing"):
        shape.describe.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'lower'"):
        shape.describe.remote("x", lower=True)
    with pytest.raises(AttributeError, match="no_such"):
        shape.no_such.remote()


def test_defaults_keywords_and_varargs_work():
    assert zray.get(two.remote(1)) == 11
    assert zray.get(two.remote(1, 2, scale=3)) == 9
    assert zray.get(two.remote(b=1, a=zray.put(2))) == 3
    assert zray.get(flexible.remote(1, 2, x=1, y=2)) == (2, ["x", "y"])
    shape = Shape.remote(4)
    assert zray.get(shape.describe.remote("a ", upper=True)) == "A SHAPE:4"


def test_a_handle_from_get_actor_binds_too():
    name = unique("shape")
    Shape.options(name=name).remote(5)
    again = zray.get_actor(name)
    assert zray.get(again.describe.remote(prefix="")) == "shape:5"
    with pytest.raises(TypeError, match="too many positional"):
        again.describe.remote(1, 2)


# ------------------------------------------------------------------ task options


def test_retry_exceptions_true_retries_application_errors(tmp_path):
    path = str(tmp_path / "tries")

    @zray.remote(max_retries=3, retry_exceptions=True)
    def flaky():
        note(path)
        if count_lines(path) < 3:
            raise ValueError("not yet")
        return "ok"

    assert zray.get(flaky.remote()) == "ok"
    assert count_lines(path) == 3


def test_retry_exceptions_list_retries_only_those_types(tmp_path):
    listed, other = str(tmp_path / "listed"), str(tmp_path / "other")

    @zray.remote(max_retries=2, retry_exceptions=[KeyError])
    def fails(path, kind):
        note(path)
        raise kind("boom")

    with pytest.raises(KeyError):
        zray.get(fails.remote(listed, KeyError))
    assert count_lines(listed) == 3  # the first run and two retries
    with pytest.raises(ValueError):
        zray.get(fails.remote(other, ValueError))
    assert count_lines(other) == 1


def test_application_errors_are_not_retried_by_default(tmp_path):
    path = str(tmp_path / "once")

    @zray.remote
    def fails():
        note(path)
        raise ValueError("boom")

    with pytest.raises(ValueError):
        zray.get(fails.remote())
    assert count_lines(path) == 1


def test_memory_is_a_demand_the_node_must_fit():
    @zray.remote(memory=1024 * 1024)
    def small():
        return "ran"

    assert zray.get(small.remote()) == "ran"
    too_big = small.options(memory=int(zray.cluster_resources()["memory"]) * 2).remote()
    ready, _ = zray.wait([too_big], timeout=1.0)
    assert not ready
    zray.cancel(too_big)


def test_runtime_env_env_vars_are_set_around_the_call():
    @zray.remote(runtime_env={"env_vars": {"ZRAY_TEST_VAR": "on"}})
    def read():
        return os.environ.get("ZRAY_TEST_VAR")

    @zray.remote
    def read_plain():
        return os.environ.get("ZRAY_TEST_VAR")

    assert zray.get(read.remote()) == "on"
    assert zray.get([read_plain.remote() for _ in range(8)]) == [None] * 8


def test_strategies_and_names_run():
    node = zray.get_runtime_context().get_node_id()
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    assert zray.get(two.options(scheduling_strategy="SPREAD").remote(1)) == 11
    assert zray.get(two.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(2)) == 12

    @zray.remote(name="custom_task_name")
    def fails():
        raise ValueError("named")

    with pytest.raises(ValueError, match="custom_task_name"):
        zray.get(fails.remote())


def test_async_def_tasks_run_on_an_event_loop():
    @zray.remote
    async def slow_add(a, b):
        await asyncio.sleep(0.01)
        return a + b

    @zray.remote
    async def fails():
        await asyncio.sleep(0)
        raise KeyError("async boom")

    assert zray.get([slow_add.remote(i, 1) for i in range(6)]) == list(range(1, 7))
    with pytest.raises(KeyError):
        zray.get(fails.remote())


# ------------------------------------------------------------------ actor options


@zray.remote(max_restarts=1, max_task_retries=1)
class Fragile:
    def __init__(self, path):
        self.path = path

    def crash_once(self):
        note(self.path)
        if count_lines(self.path) == 1:
            os._exit(1)
        return os.getpid()

    @zray.method(max_task_retries=0)
    def crash_no_retry(self):
        os._exit(1)


def test_max_task_retries_runs_calls_again_on_the_restarted_actor(tmp_path):
    fragile = Fragile.remote(str(tmp_path / "runs"))
    pid = zray.get(fragile.crash_once.remote(), timeout=60)
    assert pid > 0 and count_lines(str(tmp_path / "runs")) == 2


def test_a_methods_max_task_retries_overrides_the_actors(tmp_path):
    fragile = Fragile.remote(str(tmp_path / "runs"))
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(fragile.crash_no_retry.remote(), timeout=60)


@zray.remote
class Flaky:
    def __init__(self):
        self.calls = 0

    @zray.method(retry_exceptions=[ValueError], max_task_retries=2)
    def third_time(self):
        self.calls += 1
        if self.calls < 3:
            raise ValueError("again")
        return self.calls

    def plain_fail(self):
        self.calls += 1
        raise ValueError("once")

    def count(self):
        return self.calls


def test_actor_methods_retry_the_exceptions_they_name():
    flaky = Flaky.remote()
    assert zray.get(flaky.third_time.remote()) == 3
    with pytest.raises(ValueError):
        zray.get(flaky.plain_fail.remote())
    assert zray.get(flaky.count.remote()) == 4
    with pytest.raises(ValueError):
        zray.get(flaky.plain_fail.options(retry_exceptions=True, max_task_retries=1).remote())
    assert zray.get(flaky.count.remote()) == 6


@zray.remote
class Gate:
    def __init__(self):
        self.open = threading.Event()

    def wait(self, timeout=30):
        return "through" if self.open.wait(timeout) else "timed out"

    def release(self):
        self.open.set()


def test_max_pending_calls_is_counted_per_handle():
    gate = Gate.options(max_pending_calls=2, max_concurrency=4).remote()
    first, second = gate.wait.remote(1.0), gate.wait.remote(1.0)
    with pytest.raises(exceptions.PendingCallsLimitExceeded, match="max_pending_calls"):
        gate.release.remote()
    assert zray.get([first, second]) == ["timed out"] * 2
    zray.get(gate.release.remote())  # the finished calls no longer count
    assert zray.get(gate.wait.remote()) == "through"


def test_named_actors_live_in_namespaces():
    name = unique("counter")
    Shape.options(name=name, namespace="ns_one").remote(1)
    Shape.options(name=name, namespace="ns_two").remote(2)
    with pytest.raises(ValueError):
        zray.get_actor(name)  # not in this job's namespace
    one = zray.get_actor(name, namespace="ns_one")
    two_ = zray.get_actor(name, namespace="ns_two")
    assert zray.get([one.describe.remote(""), two_.describe.remote("")]) == \
        ["shape:1", "shape:2"]
    with pytest.raises(ValueError, match=name):
        Shape.options(name=name, namespace="ns_one").remote(3)
    again = Shape.options(name=name, namespace="ns_one", get_if_exists=True).remote(9)
    assert zray.get(again.describe.remote("")) == "shape:1"
    mine = Shape.options(name=name).remote(7)
    assert zray.get(zray.get_actor(name).describe.remote("")) == "shape:7"
    assert mine == zray.get_actor(name)


def test_an_actor_runs_in_its_jobs_namespace_whatever_its_names():
    @zray.remote
    class Where:
        def namespace(self):
            return zray.get_runtime_context().namespace

    named = Where.options(name=unique("where"), namespace="elsewhere").remote()
    assert zray.get(named.namespace.remote()) == zray.get_runtime_context().namespace


def test_a_task_finds_its_jobs_named_actors():
    name = unique("shape")
    Shape.options(name=name).remote(6)

    @zray.remote
    def look_up(name):
        return zray.get(zray.get_actor(name).describe.remote(""))

    assert zray.get(look_up.remote(name)) == "shape:6"


def test_get_if_exists_needs_a_name():
    with pytest.raises(ValueError, match="get_if_exists"):
        Shape.options(get_if_exists=True).remote(1)


# ------------------------------------------------------------------ the user's class


class Named:
    def greeting(self):
        return "hello from " + type(self).__name__


@zray.remote
class Kept(Named):
    LIMIT = 7

    @staticmethod
    def double(x):
        return 2 * x

    def limits(self):
        return Kept.LIMIT, Kept.double(4), self.LIMIT


def test_class_attributes_and_inherited_methods():
    assert Kept.LIMIT == 7 and Kept.double(3) == 6
    kept = Kept.remote()
    assert zray.get(kept.limits.remote()) == (7, 8, 7)
    assert zray.get(kept.greeting.remote()) == "hello from Kept"
    assert zray.get(kept.double.remote(5)) == 10
    assert zray.get(kept.__ray_ready__.remote()) is True


# ------------------------------------------------------------------ concurrency groups


class GroupedBase:
    def __init__(self):
        self.arrived = threading.Semaphore(0)

    @zray.method(concurrency_group="io")
    def meet(self):
        self.arrived.release()
        # Both io calls must run at once for both to get through.
        if not self.arrived.acquire(timeout=10):
            return "alone"
        self.arrived.release()
        return "met"

    @zray.method(concurrency_group="compute")
    def compute(self, x):
        return threading.current_thread().name, x


@zray.remote(concurrency_groups={"io": 2})
class AsyncGrouped:
    def __init__(self):
        self.waiting = 0

    @zray.method(concurrency_group="io")
    async def meet(self):
        self.waiting += 1
        for _ in range(500):
            if self.waiting >= 2:
                return "met"
            await asyncio.sleep(0.01)
        return "alone"


Grouped = zray.remote(concurrency_groups={"io": 2, "compute": 1})(GroupedBase)


def test_calls_of_a_concurrency_group_run_side_by_side():
    grouped = Grouped.remote()
    assert zray.get([grouped.meet.remote(), grouped.meet.remote()]) == ["met", "met"]
    thread, value = zray.get(grouped.compute.remote(3))
    assert "compute" in thread and value == 3


def test_async_concurrency_groups():
    grouped = AsyncGrouped.remote()
    assert zray.get([grouped.meet.remote(), grouped.meet.remote()]) == ["met", "met"]


def test_the_decorator_takes_every_actor_option():
    for option in ({"max_pending_calls": 3}, {"namespace": "ns"}, {"get_if_exists": False},
                   {"concurrency_groups": {"io": 1}}, {"max_task_retries": 1}):
        assert isinstance(zray.remote(**option)(GroupedBase), zray.actor.ActorClass), option
    with pytest.raises(ValueError, match="max_restarts"):
        zray.remote(max_restarts=1)(two._function)


def test_the_decorator_with_empty_parentheses_is_an_error():
    with pytest.raises(TypeError, match="parentheses"):
        zray.remote()


# ------------------------------------------------------------------ exit_actor


@zray.remote
class Quitter:
    def __init__(self, path, quit_now=False):
        self.path = path
        atexit.register(note, path, "atexit")
        if quit_now:
            exit_actor()

    def pid(self):
        return os.getpid()

    def quit(self):
        exit_actor()
        return "not reached"

    def swallow(self):
        try:
            exit_actor()
        except Exception:  # exit_actor is not an Exception: this does not catch it
            return "caught"


def _exited_on_purpose(ref):
    with pytest.raises(exceptions.ActorDiedError, match="exited on purpose") as info:
        zray.get(ref, timeout=30)
    return info.value


def test_exit_actor_in_a_method(tmp_path):
    path = str(tmp_path / "log")
    quitter = Quitter.remote(path)
    pid = zray.get(quitter.pid.remote())
    quit_ref = quitter.quit.remote()
    after = quitter.pid.remote()
    _exited_on_purpose(quit_ref)
    with pytest.raises(exceptions.ActorDiedError, match="exit"):
        zray.get(after, timeout=30)
    wait_pid_gone(pid)
    assert "atexit" in open(path).read()
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(quitter.pid.remote(), timeout=30)


def test_exit_actor_is_not_caught_by_except_exception(tmp_path):
    quitter = Quitter.remote(str(tmp_path / "log"))
    _exited_on_purpose(quitter.swallow.remote())


def test_exit_actor_in_the_constructor(tmp_path):
    path = str(tmp_path / "log")
    quitter = Quitter.remote(path, quit_now=True)
    with pytest.raises(exceptions.ActorDiedError, match="exit") as info:
        zray.get(quitter.pid.remote(), timeout=30)
    assert "exited on purpose" in str(info.value)
    assert "constructor raised" not in str(info.value)
    deadline = time.monotonic() + 20
    while "atexit" not in (open(path).read() if os.path.exists(path) else ""):
        assert time.monotonic() < deadline, "the constructor's atexit handler did not run"
        time.sleep(0.05)


def test_ray_terminate_ends_the_actor(tmp_path):
    quitter = Quitter.remote(str(tmp_path / "log"))
    pid = zray.get(quitter.pid.remote())
    quitter.__ray_terminate__.remote()
    wait_pid_gone(pid)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(quitter.pid.remote(), timeout=30)


@zray.remote(max_concurrency=4)
class ThreadedQuitter:
    def __init__(self):
        self.started = threading.Event()

    def long_call(self):
        self.started.set()
        time.sleep(0.5)
        return "finished"

    def quit(self):
        self.started.wait(10)
        exit_actor()


def test_exit_actor_in_a_threaded_actor_lets_running_calls_finish():
    actor = ThreadedQuitter.remote()
    running = actor.long_call.remote()
    _exited_on_purpose(actor.quit.remote())
    assert zray.get(running, timeout=30) == "finished"
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(actor.long_call.remote(), timeout=30)


@zray.remote
class AsyncQuitter:
    async def pid(self):
        return os.getpid()

    async def quit(self):
        await asyncio.sleep(0)
        exit_actor()


def test_exit_actor_in_an_async_actor():
    actor = AsyncQuitter.remote()
    pid = zray.get(actor.pid.remote())
    _exited_on_purpose(actor.quit.remote())
    wait_pid_gone(pid)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(actor.pid.remote(), timeout=30)


def test_a_restartable_actor_that_exits_stays_dead(tmp_path):
    quitter = Quitter.options(max_restarts=3).remote(str(tmp_path / "log"))
    pid = zray.get(quitter.pid.remote())
    _exited_on_purpose(quitter.quit.remote())
    wait_pid_gone(pid)
    with pytest.raises(exceptions.ActorDiedError):
        zray.get(quitter.pid.remote(), timeout=30)
