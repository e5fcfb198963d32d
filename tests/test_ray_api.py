"""Ray's API surface: exception names and hierarchy, the module tree Ray code
imports, init's parameters, get/wait semantics, the runtime context and the
``memory`` resource.  Unit tests first, then one shared cluster for the
module, then a driver of its own for what needs a fresh process."""

import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

import zray
from zray import exceptions
from zray._private import init_options, serialization, services

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- exceptions

@pytest.mark.parametrize("child, parent", [
    (exceptions.RayTaskError, exceptions.RayError),
    (exceptions.RayActorError, exceptions.RayError),
    (exceptions.ActorDiedError, exceptions.RayActorError),
    (exceptions.ActorUnavailableError, exceptions.RayActorError),
    (exceptions.TaskCancelledError, exceptions.RayError),
    (exceptions.GetTimeoutError, exceptions.RayError),
    (exceptions.GetTimeoutError, TimeoutError),
    (exceptions.ObjectFreedError, exceptions.ObjectLostError),
    (exceptions.OwnerDiedError, exceptions.ObjectLostError),
    (exceptions.ObjectLostError, exceptions.RayError),
    (exceptions.ObjectStoreFullError, exceptions.RayError),
    (exceptions.OutOfMemoryError, exceptions.RayError),
    (exceptions.WorkerCrashedError, exceptions.RayError),
    (exceptions.NodeDiedError, exceptions.RayError),
    (exceptions.RaySystemError, exceptions.RayError),
    (exceptions.PendingCallsLimitExceeded, exceptions.RayError),
    (exceptions.RuntimeEnvSetupError, exceptions.RayError),
    (exceptions.TaskUnschedulableError, exceptions.RayError),
    (exceptions.ActorUnschedulableError, exceptions.RayError),
    (exceptions.UnserializableException, exceptions.RayError),
])
def test_exception_hierarchy_follows_ray(child, parent):
    assert issubclass(child, parent)


def test_old_names_are_the_same_classes():
    assert exceptions.ZrayError is exceptions.RayError
    assert exceptions.TaskError is exceptions.RayTaskError
    try:
        raise exceptions.ActorDiedError("gone")
    except exceptions.ZrayError as err:  # code written for zray's first names still works
        assert str(err) == "gone"


@pytest.mark.parametrize("name", [
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "TaskCancelledError",
    "GetTimeoutError", "ObjectLostError", "ObjectFreedError", "OwnerDiedError",
    "ObjectStoreFullError", "OutOfMemoryError", "WorkerCrashedError", "NodeDiedError",
    "RaySystemError", "PendingCallsLimitExceeded", "RuntimeEnvSetupError",
    "TaskUnschedulableError", "ActorUnschedulableError",
])
def test_from_error_knows_each_name_and_plain_pickle_round_trips(name):
    cls = getattr(exceptions, name)
    err = exceptions.from_error(name, "what happened")
    assert type(err) is cls and str(err) == "what happened"
    again = pickle.loads(pickle.dumps(err))  # the agent pickles them without cloudpickle
    assert type(again) is cls and str(again) == "what happened"


def test_task_error_is_named_after_ray_and_keeps_the_cause():
    cause = ZeroDivisionError("division by zero")
    err = exceptions.RayTaskError("f", "Traceback ...", cause, 7).as_instanceof_cause()
    assert isinstance(err, exceptions.RayTaskError) and isinstance(err, ZeroDivisionError)
    assert type(err).__name__ == "RayTaskError(ZeroDivisionError)"
    assert err.cause is cause and err.function_name == "f"


def test_an_exception_that_will_not_pickle_arrives_as_unserializable_exception():
    class NoPickle(Exception):
        def __reduce__(self):
            raise TypeError("not today")

    try:
        raise NoPickle("the details")
    except NoPickle as exc:
        data = serialization.serialize_error(exc, "g", 5)
    err = serialization.load_error(data)
    assert isinstance(err, exceptions.RayTaskError)
    assert isinstance(err.cause, exceptions.UnserializableException)
    assert "NoPickle: the details" in str(err.cause)
    assert "raise NoPickle" in err.cause.traceback_str


def test_an_exception_that_will_not_unpickle_arrives_as_unserializable_exception():
    class NeedsTwo(Exception):
        def __init__(self, a, b):
            super().__init__(a)

    data = serialization.serialize_error(NeedsTwo("first", "second"), "h", 5)
    err = serialization.load_error(data)
    assert isinstance(err.cause, exceptions.UnserializableException)
    assert "NeedsTwo: first" in str(err)


# --------------------------------------------------------------------------- names

def test_ids_have_hex_binary_equality_and_from_hex():
    raw = bytes(range(16))
    tid = zray.TaskID(raw)
    assert tid.binary() == raw and tid.hex() == raw.hex()
    assert zray.TaskID.from_hex(raw.hex()) == tid and hash(zray.TaskID(raw)) == hash(tid)
    assert zray.ActorID(raw) != tid  # an ID's type is part of it
    assert pickle.loads(pickle.dumps(tid)) == tid
    assert zray.NodeID.nil().is_nil() and not tid.is_nil()
    oid = zray.ObjectID(raw + b"\0\0\0\1")
    assert oid.task_id() == tid
    with pytest.raises(ValueError):
        zray.JobID(b"short")


def test_the_module_tree_ray_code_imports():
    import zray.actor
    import zray.remote_function
    import zray.runtime_context
    import zray.util.queue
    import zray.util.scheduling_strategies

    assert zray.actor.ActorHandle and zray.actor.ActorClass and callable(zray.actor.exit_actor)
    assert zray.ActorHandle is zray.actor.ActorHandle
    assert zray.runtime_context.get_runtime_context is zray.get_runtime_context
    assert zray.util.queue.Queue and zray.util.ActorPool
    for name in ("as_completed", "map_unordered", "list_named_actors",
                 "inspect_serializability", "register_serializer", "deregister_serializer",
                 "get_node_ip_address"):
        assert callable(getattr(zray.util, name)), name
    for name in ("ObjectRef", "ObjectID", "TaskID", "ActorID", "NodeID", "JobID",
                 "ObjectRefGenerator", "DynamicObjectRefGenerator"):
        assert isinstance(getattr(zray, name), type), name


def test_node_affinity_strategy_travels_as_a_list():
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = "ab" * 16
    strategy = NodeAffinitySchedulingStrategy(node, soft=True)
    assert strategy.to_wire() == ["NODE", bytes.fromhex(node), True]
    assert NodeAffinitySchedulingStrategy(zray.NodeID.from_hex(node), False).node_id == node
    with pytest.raises(ValueError):
        NodeAffinitySchedulingStrategy("not hex", soft=False)


def test_inspect_serializability_names_what_does_not_pickle():
    from zray.util import inspect_serializability

    lock = threading.Lock()

    def uses_lock():
        return lock

    out = io.StringIO()
    ok, failures = inspect_serializability(uses_lock, print_file=out)
    assert not ok and [f.name for f in failures] == ["lock"]
    assert "lock" in out.getvalue()
    assert inspect_serializability({"a": [1, 2]}, print_file=out) == (True, set())


def test_registered_serializer_is_used_and_deregistered():
    from zray.util import deregister_serializer, register_serializer

    class Holder:
        def __init__(self, value):
            self.value = value
            self.lock = threading.Lock()

    register_serializer(Holder, serializer=lambda h: h.value, deserializer=Holder)
    try:
        ser = serialization.serialize([Holder(41)])
        out = serialization.deserialize(memoryview(ser.to_bytes()), ser.layout)
        assert out[0].value == 41 and isinstance(out[0], Holder)
    finally:
        deregister_serializer(Holder)
    with pytest.raises(exceptions.SerializationError):
        serialization.serialize(Holder(1))


# --------------------------------------------------------------------------- init's parameters

def test_runtime_env_keys_zray_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="'conda'"):
        init_options.Settings(runtime_env={"conda": "env"})
    with pytest.raises(TypeError, match="env_vars"):
        init_options.Settings(runtime_env={"env_vars": {"A": 1}})
    assert init_options.Settings(runtime_env={"working_dir": "."}).env_vars == {}
    # A runtime_env travels with each task: it works on a running cluster too.
    init_options.Settings(runtime_env={"env_vars": {"A": "1"}}).check_connecting()


def test_namespace_labels_and_job_config_are_checked():
    with pytest.raises(TypeError, match="namespace"):
        init_options.Settings(namespace=3)
    with pytest.raises(TypeError, match="labels"):
        init_options.Settings(labels={"zone": 1})
    from_job = init_options.Settings(job_config={"ray_namespace": "jobs",
                                                 "runtime_env": {"env_vars": {"X": "y"}}})
    assert from_job.namespace == "jobs" and from_job.env_vars == {"X": "y"}
    assert init_options.Settings(temp_dir="/tmp/t").environment() == {"ZRAY_TMPDIR": "/tmp/t"}


def test_nodes_declare_memory_besides_the_object_store():
    total = services.node_resources(2, 0, {"x": 1}, 1 << 20)
    assert total["CPU"] == 2 and total["x"] == 1 and "GPU" not in total
    assert 0 < total["memory"] <= services.available_memory()
    assert services.node_resources(1, 0, {"memory": 5.0}, 1 << 20)["memory"] == 5.0


# --------------------------------------------------------------------------- one cluster

@pytest.fixture(scope="module")
def cluster():
    ctx = zray.init(num_cpus=4, namespace="api-test", labels={"zone": "a"},
                    runtime_env={"env_vars": {"ZRAY_API_TEST": "from-init"}},
                    include_dashboard=False, dashboard_host="0.0.0.0", dashboard_port=8265,
                    logging_level=logging.WARNING, configure_logging=True, job_config=None,
                    _system_config={"some_flag": 1})
    yield ctx
    zray.shutdown()


@zray.remote
def echo(x):
    return x


@zray.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


@zray.remote
def divide(a, b):
    return a / b


@zray.remote
def divide_twice_removed(a, b):
    return zray.get(divide.remote(a, b))


def test_runtime_env_vars_reach_the_workers(cluster):
    @zray.remote
    def read_env():
        return os.environ.get("ZRAY_API_TEST")

    assert zray.get(read_env.remote()) == "from-init"
    assert "ZRAY_API_TEST" not in os.environ  # the driver's own environment is untouched


def test_the_context_names_the_session(cluster):
    assert cluster["node_id"] and cluster.dashboard_url is None
    assert cluster["job_id"] == zray.get_runtime_context().get_job_id()


def test_a_failure_two_tasks_deep_keeps_its_type(cluster):
    with pytest.raises(ZeroDivisionError) as info:
        zray.get(divide_twice_removed.remote(1, 0))
    err = info.value
    assert isinstance(err, exceptions.RayTaskError) and isinstance(err.cause, ZeroDivisionError)
    assert "divide_twice_removed" in str(err) and "division by zero" in str(err)


def test_a_task_raising_something_unpicklable_reports_its_text(cluster):
    @zray.remote
    def raise_unpicklable():
        class Local(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a}-{b}")
        raise Local("x", "y")

    with pytest.raises(exceptions.RayTaskError) as info:
        zray.get(raise_unpicklable.remote())
    assert isinstance(info.value.cause, exceptions.UnserializableException)
    assert "x-y" in str(info.value)


def test_get_of_a_list_raises_the_first_failure_without_waiting(cluster):
    slow = nap.remote(60)
    started = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        zray.get([slow, divide.remote(1, 0), echo.remote(1)])
    assert time.monotonic() - started < 30
    zray.cancel(slow, force=True)


def test_empty_lists_and_timeouts(cluster):
    assert zray.get([]) == []
    assert zray.wait([]) == ([], [])
    assert zray.wait([]) == ([], [])
    slow = nap.remote(60)
    started = time.monotonic()
    with pytest.raises(exceptions.GetTimeoutError):
        zray.get(slow, timeout=0)
    assert time.monotonic() - started < 5
    done = echo.remote(3)
    zray.wait([done])
    assert zray.get(done, timeout=0) == 3
    ready, rest = zray.wait([slow, done], num_returns=1, timeout=5, fetch_local=False)
    assert ready == [done] and rest == [slow]
    with pytest.raises(ValueError, match="num_returns"):
        zray.wait([done], num_returns=0)
    zray.cancel(slow, force=True)


def test_runtime_context_in_a_driver(cluster):
    ctx = zray.get_runtime_context()
    assert ctx.get_task_id() is None and ctx.get_actor_id() is None
    assert ctx.namespace == "api-test"
    assert ctx.get_node_id() == cluster["node_id"]
    assert ctx.get_assigned_resources() == {} and ctx.get_accelerator_ids() == {"GPU": []}


def test_runtime_context_in_a_task(cluster):
    @zray.remote(num_cpus=0.5)
    def half():
        c = zray.get_runtime_context()
        return (c.get_job_id(), c.get_task_id(), c.get_actor_id(), c.namespace,
                c.get_assigned_resources(), c.get_accelerator_ids(), c.get_worker_id())

    @zray.remote
    def whole():
        return zray.get_runtime_context().get_assigned_resources()

    ref = half.remote()
    job, task, actor, namespace, resources, accelerators, worker = zray.get(ref)
    driver = zray.get_runtime_context()
    assert job == driver.get_job_id() and task == ref.task_id().hex() and actor is None
    assert namespace == "api-test"
    assert resources == {"CPU": 0.5} and accelerators == {"GPU": []}
    assert worker != driver.get_worker_id()
    assert zray.get(whole.remote()) == {"CPU": 1.0}


@zray.remote
class Introspective:
    def __init__(self):
        context = zray.get_runtime_context()
        self.created_as = context.get_actor_id()
        self.handle = context.current_actor

    def facts(self):
        c = zray.get_runtime_context()
        return (self.created_as, c.get_actor_id(), c.namespace, c.get_assigned_resources(),
                c.was_current_actor_reconstructed)

    def own_handle(self):
        return self.handle


def test_runtime_context_in_an_actor(cluster):
    actor = Introspective.remote()
    created_as, actor_id, namespace, resources, restarted = zray.get(actor.facts.remote())
    assert created_as == actor_id == actor._actor_id.hex()
    assert namespace == "api-test" and resources == {} and restarted is False
    assert zray.get(actor.own_handle.remote()) == actor


def test_memory_is_a_cluster_resource(cluster):
    assert zray.cluster_resources()["memory"] > 0


def test_as_completed_and_map_unordered(cluster):
    from zray.util import as_completed, map_unordered

    refs = [nap.remote(2), echo.remote("quick")]
    assert next(as_completed(refs, chunk_size=1)) == "quick"
    assert sorted(as_completed([echo.remote(i) for i in range(5)])) == list(range(5))
    assert list(as_completed([echo.remote(1)], yield_obj_refs=True))[0].hex()
    assert sorted(map_unordered(echo, range(7), backpressure_size=3, chunk_size=2)) == \
        list(range(7))
    with pytest.raises(ValueError, match="chunk_size"):
        list(as_completed(refs, chunk_size=0))


def test_registered_serializer_in_put_and_get(cluster):
    from zray.util import deregister_serializer, register_serializer

    class Session:
        def __init__(self, url):
            self.url = url
            self.lock = threading.Lock()

    register_serializer(Session, serializer=lambda s: s.url, deserializer=Session)
    try:
        assert zray.get(zray.put(Session("db://x"))).url == "db://x"

        @zray.remote
        def url_of(session):
            return session.url  # the worker rebuilt it with the deserializer

        assert zray.get(url_of.remote(Session("db://y"))) == "db://y"
    finally:
        deregister_serializer(Session)


def test_list_named_actors(cluster):
    from zray.util import list_named_actors

    @zray.remote
    class Named:
        def ping(self):
            return "pong"

    here = Named.options(name="listed-here").remote()
    assert zray.get(here.ping.remote()) == "pong"
    assert "listed-here" in list_named_actors()
    assert {"name": "listed-here", "namespace": "api-test"} in \
        list_named_actors(all_namespaces=True)


def test_worker_output_reaches_the_driver(cluster, capfd):
    @zray.remote
    def shout():
        print("heard-in-driver")
        return True

    assert zray.get(shout.remote())
    deadline = time.monotonic() + 10
    seen = ""
    while "heard-in-driver" not in seen and time.monotonic() < deadline:
        zray.get(echo.remote(None))  # the LOG arrives while the driver reads
        seen += capfd.readouterr().out
    assert "heard-in-driver" in seen


# --------------------------------------------------------------------------- a driver of its own

DRIVER = textwrap.dedent("""
    import logging, os, sys, time
    import zray
    from zray import exceptions

    temp_dir = sys.argv[1]

    @zray.remote
    def shout():
        print("must-not-reach-the-driver")
        return 1

    with zray.init(num_cpus=1, log_to_driver=False, _temp_dir=temp_dir,
                   logging_format="ZRAYFMT %(message)s") as ctx:
        assert ctx["session_dir"].startswith(temp_dir), ctx["session_dir"]
        kept = zray.put("old")
        for _ in range(5):
            zray.get(shout.remote())
        time.sleep(0.5)
        zray.get(shout.remote())
        logging.getLogger("zray").warning("formatted")
    assert not zray.is_initialized()
    zray.init(num_cpus=1, _temp_dir=temp_dir)
    try:
        zray.get(kept)
    except exceptions.ObjectLostError as exc:
        print("stale ref:", exc)
    zray.shutdown()
    print("driver done")
""")


def test_a_driver_with_its_own_settings(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    temp_dir = Path(tempfile.mkdtemp(prefix="zt", dir="/tmp"))  # socket paths are short
    try:
        _run_driver(script, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _run_driver(script, temp_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), str(temp_dir)], capture_output=True,
                          text=True, timeout=50, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "driver done" in proc.stdout
    assert "must-not-reach-the-driver" not in proc.stdout + proc.stderr
    assert "ZRAYFMT formatted" in proc.stderr
    assert "stale ref:" in proc.stdout and "session that has ended" in proc.stdout
    assert not any((temp_dir / "zray_sessions").iterdir())  # both sessions cleaned up
