"""Options, argument binding and actor classes, without a cluster.

The option tables of remote functions, actors and methods (Ray's names and
defaults, errors naming the option), the spec fields they become, the
signature check made at ``.remote()``, and what ``@zray.remote`` keeps of a
decorated class.
"""

import pickle

import cloudpickle
import pytest

import zray
from zray import actor as actor_mod
from zray._private import options, signature
from zray._private.options import (ACTOR_OPTIONS, METHOD_OPTIONS, TASK_OPTIONS, run_settings,
                                  validate_options)
from zray.remote_function import RemoteFunction, _Call, remote_decorator


# ------------------------------------------------------------------ option tables


def test_ray_defaults():
    assert TASK_OPTIONS["max_retries"].default == 3
    assert TASK_OPTIONS["num_returns"].default == 1
    assert TASK_OPTIONS["retry_exceptions"].default is False
    assert TASK_OPTIONS["max_calls"].default == 0
    assert ACTOR_OPTIONS["max_restarts"].default == 0
    assert ACTOR_OPTIONS["max_task_retries"].default == 0
    assert ACTOR_OPTIONS["max_pending_calls"].default == -1
    assert ACTOR_OPTIONS["get_if_exists"].default is False


@pytest.mark.parametrize("table, key, value", [
    (TASK_OPTIONS, "num_cpus", "2"),
    (TASK_OPTIONS, "max_retries", 1.5),
    (TASK_OPTIONS, "num_returns", True),
    (TASK_OPTIONS, "name", 3),
    (TASK_OPTIONS, "retry_exceptions", "yes"),
    (TASK_OPTIONS, "accelerator_type", 7),
    (ACTOR_OPTIONS, "max_concurrency", "4"),
    (ACTOR_OPTIONS, "get_if_exists", 1),
    (ACTOR_OPTIONS, "namespace", b"ns"),
    (METHOD_OPTIONS, "concurrency_group", 1),
])
def test_wrong_type_is_a_type_error_naming_the_option(table, key, value):
    with pytest.raises(TypeError, match=key):
        validate_options({key: value}, table, "here")


@pytest.mark.parametrize("table, key, value", [
    (TASK_OPTIONS, "num_cpus", -1),
    (TASK_OPTIONS, "max_retries", -2),
    (TASK_OPTIONS, "num_returns", "lazy"),
    (TASK_OPTIONS, "num_returns", 10_001),
    (TASK_OPTIONS, "retry_exceptions", [ValueError, "KeyError"]),
    (TASK_OPTIONS, "scheduling_strategy", "PACK"),
    (TASK_OPTIONS, "memory", -5),
    (TASK_OPTIONS, "runtime_env", {"env_vars": {"A": 1}}),
    (TASK_OPTIONS, "resources", {"memory": 10}),
    (ACTOR_OPTIONS, "max_pending_calls", 0),
    (ACTOR_OPTIONS, "max_restarts", -2),
    (ACTOR_OPTIONS, "lifetime", "forever"),
    (ACTOR_OPTIONS, "name", ""),
    (ACTOR_OPTIONS, "concurrency_groups", {"io": 0}),
    (METHOD_OPTIONS, "max_task_retries", -3),
])
def test_bad_value_is_a_value_error_naming_the_option(table, key, value):
    with pytest.raises(ValueError, match=key if key != "resources" else "memory"):
        validate_options({key: value}, table, "here")


def test_unknown_option_names_itself_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"'max_restarts'.*max_retries"):
        validate_options({"max_restarts": 1}, TASK_OPTIONS, "f.options()")
    with pytest.raises(ValueError, match="'max_calls'"):
        validate_options({"max_calls": 1}, ACTOR_OPTIONS, "A.options()")


def test_every_documented_option_is_accepted():
    validate_options({
        "num_returns": 2, "num_cpus": 0.5, "num_gpus": 0, "resources": {"R": 1},
        "memory": 1024, "accelerator_type": "A100", "max_calls": 2, "max_retries": -1,
        "retry_exceptions": [ValueError], "runtime_env": {"env_vars": {"A": "1"}},
        "scheduling_strategy": "SPREAD", "name": "t"}, TASK_OPTIONS, "here")
    validate_options({
        "num_cpus": 1, "num_gpus": 0, "resources": {}, "memory": 10, "accelerator_type": "T4",
        "max_restarts": -1, "max_task_retries": -1, "max_concurrency": 3,
        "max_pending_calls": 5, "lifetime": "detached", "name": "a", "namespace": "ns",
        "get_if_exists": True, "concurrency_groups": {"io": 2}, "runtime_env": {},
        "scheduling_strategy": None}, ACTOR_OPTIONS, "here")
    validate_options({"num_returns": 0, "max_task_retries": 2, "retry_exceptions": True,
                      "concurrency_group": "io", "name": "m"}, METHOD_OPTIONS, "here")


# ------------------------------------------------------------------ what specs carry


class _Strategy:
    def to_wire(self):
        return ["NODE", b"\x01" * 4, True]


def test_demand_memory_and_accelerator_type():
    demand = options.resource_demand({"num_cpus": 2, "memory": 1536.7,
                                      "accelerator_type": "A100", "resources": {"R": 1}})
    assert demand == {"CPU": 2.0, "memory": 1536.0, "accelerator_type:A100": 0.001, "R": 1.0}
    assert options.resource_demand({}, default_cpus=0) == {}


def test_spec_fields_of_task_options():
    call = _Call(validate_options({"retry_exceptions": [KeyError], "scheduling_strategy": "SPREAD",
                                   "max_calls": 4}, TASK_OPTIONS, "here"), "f")
    assert call.extra["scheduling_strategy"] == ["SPREAD"]
    assert call.extra["max_calls"] == 4
    assert cloudpickle.loads(call.extra["retry_exceptions"]) == (KeyError,)
    assert _Call({"retry_exceptions": True}, "f").extra == {"retry_exceptions": True}
    assert _Call({"scheduling_strategy": _Strategy()}, "f").extra["scheduling_strategy"] == \
        ["NODE", b"\x01" * 4, True]
    assert _Call({"scheduling_strategy": "DEFAULT"}, "f").extra == {}
    assert _Call({"name": "custom"}, "f").name == "custom"


def test_gpu_tasks_default_to_one_call_per_worker():
    assert _Call({"num_gpus": 1}, "f").extra["max_calls"] == 1
    assert "max_calls" not in _Call({"num_gpus": 1, "max_calls": 0}, "f").extra
    assert "max_calls" not in _Call({}, "f").extra


def test_env_vars_and_concurrency_groups_travel_in_the_spec():
    assert "env_vars" not in _Call({}, "f").extra
    assert _Call({"runtime_env": {"env_vars": {"A": "1"}}}, "f").extra["env_vars"] == {"A": "1"}
    assert run_settings({"concurrency_groups": {"io": 2}}) == {"concurrency_groups": {"io": 2}}
    assert run_settings({"runtime_env": {"config": {}}}) == {}


# ------------------------------------------------------------------ the decorator


def test_empty_parentheses_and_unknown_keywords_fail_at_the_decorator():
    with pytest.raises(TypeError, match="without parentheses"):
        remote_decorator()
    with pytest.raises(ValueError, match="num_cpuz"):
        remote_decorator(num_cpuz=1)


def test_options_checked_against_the_targets_table():
    with pytest.raises(ValueError, match="max_restarts"):
        remote_decorator(max_restarts=1)(lambda: 1)
    with pytest.raises(ValueError, match="max_retries"):
        remote_decorator(max_retries=1)(type("A", (), {}))
    assert isinstance(remote_decorator(max_pending_calls=2)(type("A", (), {})),
                      actor_mod.ActorClass)
    assert isinstance(remote_decorator(num_returns=2)(lambda: (1, 2)), RemoteFunction)


# ------------------------------------------------------------------ binding


def _binder(fn, drop_first=False):
    return signature.of_callable(fn, fn.__name__, drop_first)


def test_binding_like_python():
    def f(a, b=2, *args, c, d=4, **kw):
        pass

    binder = _binder(f)
    binder.check((1,), {"c": 3})
    binder.check((1, 2, 3, 4), {"c": 3, "z": 0})
    with pytest.raises(TypeError, match=r"f\(\) missing a required argument: 'c'"):
        binder.check((1,), {})

    def g(a, b=2):
        pass

    binder = _binder(g)
    binder.check((1,), {})
    binder.check((), {"a": 1, "b": 3})
    binder.check((1,), {"b": 3})
    with pytest.raises(TypeError, match="too many positional"):
        binder.check((1, 2, 3), {})
    with pytest.raises(TypeError, match="missing"):
        binder.check((), {"b": 1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        binder.check((1,), {"z": 1})
    with pytest.raises(TypeError, match="multiple values"):
        binder.check((1,), {"a": 1})


def test_positional_only_parameters_are_not_keywords():
    exec_ns = {}
    exec("def h(a, /, b):\n    pass", exec_ns)
    binder = _binder(exec_ns["h"])
    binder.check((1,), {"b": 2})
    with pytest.raises(TypeError):
        binder.check((), {"a": 1, "b": 2})


def test_method_signatures_travel_in_a_plain_form():
    class K:
        def m(self, x, *, y=1):
            pass

        @staticmethod
        def s(x):
            pass

        @classmethod
        def c(cls, x, y=0):
            pass

    for name, good, bad in [("m", ((1,), {"y": 2}), ((1, 2), {})),
                            ("s", ((1,), {}), ((), {})),
                            ("c", ((1, 2), {}), ((1, 2, 3), {}))]:
        wire = signature.to_wire(signature.method_signature(K, name))
        binder = signature.from_wire(pickle.loads(pickle.dumps(wire)), f"K.{name}")
        binder.check(*good)
        with pytest.raises(TypeError):
            binder.check(*bad)


# ------------------------------------------------------------------ actor classes


class Base:
    def inherited(self):
        return "base"


class Kept(Base):
    CONST = 42

    def __init__(self, x, y=0):
        self.x = x

    @staticmethod
    def helper(v):
        return v + 1

    @classmethod
    def make(cls):
        return cls.CONST

    @zray.method(num_returns=2, max_task_retries=3, retry_exceptions=[KeyError],
                 concurrency_group="io")
    def pair(self):
        return 1, 2


KeptActor = zray.remote(Kept)


def test_the_decorated_class_keeps_the_users_class():
    assert KeptActor.CONST == 42
    assert KeptActor.helper(1) == 2
    assert KeptActor.make() == 42
    assert KeptActor.__name__ == "Kept" and KeptActor.__doc__ == Kept.__doc__
    with pytest.raises(AttributeError, match="nope"):
        KeptActor.nope  # noqa: B018


def test_the_method_table_has_inherited_builtin_and_decorated_methods():
    table = KeptActor._methods
    assert {"inherited", "helper", "make", "pair", "__ray_ready__",
            "__ray_terminate__"} <= set(table)
    pair = table["pair"]
    assert (pair.num_returns, pair.max_task_retries, pair.concurrency_group) == (2, 3, "io")
    assert cloudpickle.loads(pair.retry_exceptions) == (KeyError,)
    again = pickle.loads(pickle.dumps(pair))
    assert again.to_wire() == pair.to_wire()
    assert pair.with_options({"num_returns": 1, "name": "x"}).num_returns == 1
    assert pair.num_returns == 2


def test_subclassing_an_actor_class_is_a_clear_error():
    with pytest.raises(TypeError, match="cannot be subclassed"):
        class Sub(KeptActor):  # noqa: F811
            pass


def test_an_actor_class_pickles():
    again = cloudpickle.loads(cloudpickle.dumps(KeptActor))
    assert isinstance(again, actor_mod.ActorClass) and again.CONST == 42


def test_bad_actor_and_method_options_fail_in_the_callers_line():
    with pytest.raises(ValueError, match="max_pending_calls"):
        KeptActor.options(max_pending_calls=-5)
    with pytest.raises(TypeError, match="concurrency_groups"):
        KeptActor.options(concurrency_groups=["io"])
    with pytest.raises(ValueError, match="'bogus'"):
        zray.method(bogus=1)


def test_bare_method_decorator():
    @zray.method
    def m(self):
        return 1

    assert m.__zray_method_options__ == {}


def test_exit_actor_outside_an_actor_is_a_type_error():
    with pytest.raises(TypeError, match="inside an actor"):
        actor_mod.exit_actor()
