"""Tests for zray._private.scheduling: resource units, validation, GPU ids, placement."""

from __future__ import annotations

import numpy as np
import pytest

from zray._private.scheduling import (
    UNIT,
    GpuPool,
    NodeLoad,
    Unschedulable,
    acquire,
    choose_by_strategy,
    choose_node,
    fits,
    from_units,
    missing,
    release,
    should_spill,
    to_units,
    validate_resource_request,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------- arithmetic


def test_to_units_and_back():
    units = to_units({"CPU": 1.5, "GPU": 0.25, "disk": 0, "tiny": 0.00001, "accel": 2})
    assert units == {"CPU": 15_000, "GPU": 2_500, "accel": 20_000}
    assert all(isinstance(count, int) for count in units.values())
    assert from_units(units) == {"CPU": 1.5, "GPU": 0.25, "accel": 2.0}
    assert to_units({"CPU": 0.1}) == {"CPU": UNIT // 10}


def test_ten_tenths_fill_one_cpu_exactly():
    available = to_units({"CPU": 1})
    tenth = to_units({"CPU": 0.1})
    for _ in range(10):
        assert fits(available, tenth)
        acquire(available, tenth)
    assert available == {"CPU": 0}
    assert not fits(available, tenth)
    for _ in range(10):
        release(available, tenth)
    assert available == {"CPU": UNIT}


def test_fits_checks_every_resource():
    available = {"CPU": 2 * UNIT, "GPU": UNIT}
    assert fits(available, {})
    assert fits(available, {"CPU": 2 * UNIT, "GPU": UNIT})
    assert not fits(available, {"CPU": 2 * UNIT + 1})
    assert not fits(available, {"CPU": UNIT, "custom": 1})
    assert fits(available, {"custom": 0})


def test_forced_acquire_may_go_negative():
    available = {"CPU": UNIT}
    acquire(available, {"CPU": 2 * UNIT, "custom": UNIT})
    assert available == {"CPU": -UNIT, "custom": -UNIT}
    release(available, {"CPU": 2 * UNIT, "custom": UNIT})
    assert available == {"CPU": UNIT, "custom": 0}


def test_missing_names_what_a_node_can_never_provide():
    total = to_units({"CPU": 4, "GPU": 1})
    assert missing(total, to_units({"CPU": 4, "GPU": 1})) == {}
    assert missing(total, to_units({"CPU": 8, "GPU": 0.5, "tpu": 1})) == {
        "CPU": (8.0, 4.0),
        "tpu": (1.0, 0.0),
    }


# ----------------------------------------------------------------- validation


def test_validate_builds_the_demand():
    assert validate_resource_request(None, None, None, where="f") == {}
    assert validate_resource_request(2, 0.5, {"disk": 3}, where="f") == {
        "CPU": 2.0, "GPU": 0.5, "disk": 3.0}
    # An explicit zero is kept, so the caller can tell it from "not given".
    assert validate_resource_request(0, None, {}, where="f") == {"CPU": 0.0}
    assert validate_resource_request(np.float64(0.5), np.int64(1), None, where="f") == {
        "CPU": 0.5, "GPU": 1.0}


def test_validate_rounds_to_four_places():
    demand = validate_resource_request(0.123456, None, {"x": 0.00001}, where="f")
    assert demand == {"CPU": 0.1235, "x": 0.0}
    # Rounding happens before the whole-number rule: 2.00001 is just 2.
    assert validate_resource_request(2.00001, None, None, where="f") == {"CPU": 2.0}


@pytest.mark.parametrize(("kwargs", "field", "reason"), [
    ({"num_cpus": -1}, "num_cpus", "negative"),
    ({"num_gpus": -0.5}, "num_gpus", "negative"),
    ({"num_cpus": "2"}, "num_cpus", "must be a number"),
    ({"num_cpus": True}, "num_cpus", "must be a number"),
    ({"num_gpus": False}, "num_gpus", "must be a number"),
    ({"num_cpus": float("nan")}, "num_cpus", "finite"),
    ({"num_cpus": float("inf")}, "num_cpus", "finite"),
    ({"num_cpus": 1.5}, "num_cpus", "whole number"),
    ({"num_gpus": 2.5}, "num_gpus", "whole number"),
    ({"resources": {"disk": 1.5}}, "resources['disk']", "whole number"),
    ({"resources": {"disk": -1}}, "resources['disk']", "negative"),
    ({"resources": {"disk": None}}, "resources['disk']", "must be a number"),
    ({"resources": {"CPU": 1}}, "num_cpus", "instead of resources['CPU']"),
    ({"resources": {"GPU": 1}}, "num_gpus", "instead of resources['GPU']"),
    ({"resources": {3: 1}}, "resource names", "strings"),
    ({"resources": {"": 1}}, "resource names", "strings"),
    ({"resources": [("disk", 1)]}, "resources", "dict"),
])
def test_validate_rejects_bad_values(kwargs, field, reason):
    arguments = {"num_cpus": None, "num_gpus": None, "resources": None, **kwargs}
    with pytest.raises(ValueError) as caught:
        validate_resource_request(arguments["num_cpus"], arguments["num_gpus"],
                                  arguments["resources"], where="task 'train'")
    message = str(caught.value)
    assert message.startswith("task 'train': ")
    assert field in message
    assert reason in message


def test_fractions_at_most_one_are_allowed():
    assert validate_resource_request(0.0001, 1, {"disk": 0.75}, where="f") == {
        "CPU": 0.0001, "GPU": 1.0, "disk": 0.75}


# ----------------------------------------------------------------------- GPUs


def test_whole_gpus_get_distinct_ids():
    pool = GpuPool([0, 1, 2, 3])
    first = pool.assign(2)
    second = pool.assign(2)
    assert first == [0, 1]
    assert second == [2, 3]
    assert pool.assign(1) is None
    assert pool.free_capacity == 0
    pool.release(first, 2)
    assert pool.free_capacity == 2
    assert pool.assign(1) == [0]


def test_gpu_fractions_share_an_id_while_they_fit():
    pool = GpuPool([0, 1])
    assert pool.assign(0.5) == [0]
    assert pool.assign(0.25) == [0]
    assert pool.assign(0.25) == [0]      # now exactly full
    assert pool.assign(0.5) == [1]
    assert pool.free_capacity == 0.5
    # Only one idle-or-partly-used id is left with room: no whole GPU.
    assert pool.assign(1) is None
    assert pool.assign(0.6) is None
    pool.release([0], 0.25)
    assert pool.assign(0.2) == [0]       # the fullest GPU it fits on


def test_ten_tenths_share_one_gpu():
    pool = GpuPool([7])
    assert [pool.assign(0.1) for _ in range(10)] == [[7]] * 10
    assert pool.assign(0.1) is None
    assert pool.free_capacity == 0


def test_fractions_keep_whole_gpus_free():
    pool = GpuPool([0, 1])
    assert pool.assign(0.5) == [0]
    assert pool.assign(0.3) == [0]
    assert pool.assign(1) == [1]


def test_gpu_zero_and_bad_amounts():
    pool = GpuPool([0])
    assert pool.assign(0) == []
    pool.release([], 0)
    assert pool.free_capacity == 1
    with pytest.raises(ValueError):
        pool.assign(1.5)
    with pytest.raises(ValueError):
        pool.release([0], 1)            # nothing was assigned
    with pytest.raises(ValueError):
        pool.release([5], 0.5)          # not in the pool
    with pytest.raises(ValueError):
        GpuPool([0, 0])


# ------------------------------------------------------------------ placement


def node(name: str, cpus: float, free_cpus: float, *, queued: int = 0, alive: bool = True,
         local_bytes: int = 0, **other: float) -> NodeLoad:
    total = to_units({"CPU": cpus, **other})
    available = dict(total)
    available["CPU"] = round(free_cpus * UNIT)
    return NodeLoad(name.encode(), total, available, queued=queued, alive=alive,
                    local_bytes=local_bytes)


ONE_CPU = to_units({"CPU": 1})


def test_choose_prefers_a_node_where_it_fits_now():
    nodes = [node("a", 4, 0, queued=0), node("b", 4, 1, queued=5)]
    assert choose_node(nodes, ONE_CPU) == b"b"


def test_choose_prefers_locality_over_the_submitting_node():
    nodes = [node("a", 4, 4), node("b", 4, 1, local_bytes=10 << 20), node("c", 4, 4, local_bytes=1)]
    assert choose_node(nodes, ONE_CPU, prefer=b"a") == b"b"


def test_choose_prefers_the_submitting_node_over_a_less_loaded_one():
    nodes = [node("a", 4, 4), node("b", 4, 1)]
    assert choose_node(nodes, ONE_CPU, prefer=b"b") == b"b"
    assert choose_node(nodes, ONE_CPU) == b"a"


def test_choose_the_least_loaded_then_by_id():
    nodes = [node("c", 8, 2), node("b", 4, 3), node("a", 4, 3, queued=2), node("d", 4, 3)]
    # b and d both have 75% of their CPUs free and nothing queued: b by id.
    assert choose_node(nodes, ONE_CPU) == b"b"
    assert choose_node(list(reversed(nodes)), ONE_CPU) == b"b"


def test_choose_queues_on_the_shortest_queue_when_nothing_fits_now():
    nodes = [node("a", 4, 0, queued=3), node("b", 4, 0, queued=1), node("c", 1, 1)]
    two_cpus = to_units({"CPU": 2})
    assert choose_node(nodes, two_cpus) == b"b"     # c can never hold 2 CPUs


def test_choose_returns_none_when_infeasible():
    nodes = [node("a", 4, 4), node("b", 2, 2, GPU=1)]
    assert choose_node(nodes, to_units({"GPU": 2})) is None
    assert choose_node(nodes, to_units({"CPU": 1, "tpu": 1})) is None
    assert choose_node([], ONE_CPU) is None


def test_choose_ignores_dead_nodes():
    nodes = [node("a", 4, 4, alive=False, local_bytes=1 << 30), node("b", 4, 0, queued=9)]
    assert choose_node(nodes, ONE_CPU, prefer=b"a") == b"b"
    assert choose_node([node("a", 4, 4, alive=False)], ONE_CPU) is None


def test_choose_custom_resources_and_zero_demand():
    nodes = [node("a", 4, 4), node("b", 1, 1, disk=2)]
    assert choose_node(nodes, to_units({"disk": 1})) == b"b"
    assert choose_node(nodes, {}) == b"a"


def test_spill_only_from_a_saturated_node():
    local = node("a", 2, 0, queued=1)
    others = [node("b", 4, 0), node("c", 4, 2), node("d", 4, 4, alive=False)]
    assert should_spill(local, others, ONE_CPU) == b"c"
    # Nothing queued yet: the task waits here for the next free CPU.
    assert should_spill(node("a", 2, 0, queued=0), others, ONE_CPU) is None
    # It fits locally: keep it.
    assert should_spill(node("a", 2, 1, queued=3), others, ONE_CPU) is None
    # Nowhere else has room now.
    assert should_spill(local, others[:1], ONE_CPU) is None
    # Never to itself, never to a dead node.
    assert should_spill(local, [local, others[2]], ONE_CPU) is None


def test_spill_prefers_locality_then_load():
    local = node("a", 2, 0, queued=2)
    others = [node("b", 4, 4), node("c", 4, 1, local_bytes=1 << 20)]
    assert should_spill(local, others, ONE_CPU) == b"c"
    others = [node("b", 4, 4), node("c", 4, 1)]
    assert should_spill(local, others, ONE_CPU) == b"b"


# --------------------------------------------------------------------- strategies

def _nodes():
    return [NodeLoad(b"a", to_units({"CPU": 2}), to_units({"CPU": 2})),
            NodeLoad(b"b", to_units({"CPU": 2}), to_units({"CPU": 1})),
            NodeLoad(b"c", to_units({"CPU": 1}), to_units({"CPU": 1}), alive=False)]


def test_node_affinity_goes_to_its_node_even_when_another_is_idler():
    assert choose_by_strategy(_nodes(), to_units({"CPU": 1}), ["NODE", b"b", False], {}) == b"b"


def test_hard_affinity_to_a_dead_or_too_small_node_is_unschedulable():
    with pytest.raises(Unschedulable, match="not soft"):
        choose_by_strategy(_nodes(), to_units({"CPU": 1}), ["NODE", b"c", False], {})
    with pytest.raises(Unschedulable):
        choose_by_strategy(_nodes(), to_units({"CPU": 4}), ["NODE", b"a", False], {})


def test_soft_affinity_to_a_dead_node_is_placed_as_usual():
    assert choose_by_strategy(_nodes(), to_units({"CPU": 1}), ["NODE", b"c", True], {}) == b"a"


def test_spread_takes_turns_over_the_alive_nodes():
    counts: dict = {}
    picks = [choose_by_strategy(_nodes(), to_units({"CPU": 1}), ["SPREAD"], counts)
             for _ in range(4)]
    assert sorted(picks) == [b"a", b"a", b"b", b"b"] and counts == {b"a": 2, b"b": 2}


def test_no_strategy_is_the_default_placement():
    nodes = _nodes()
    assert choose_by_strategy(nodes, to_units({"CPU": 1}), None, {}) == \
        choose_node(nodes, to_units({"CPU": 1}))
