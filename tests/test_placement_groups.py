"""Placement groups: reserving bundles all or none, tasks and actors in them,
removal, job end, and on a cluster: strategies across nodes and a node's death.

A single-node session (4 CPUs) shared by TestLocal, then a cluster on loopback
(a head and two `zray worker` nodes, 1 CPU each) shared by TestCluster; each
class's session ends with the class.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from clusters import ROOT, running
from waiting import eventually

import zray
from zray import exceptions
from zray.util import (
    PlacementGroup, get_current_placement_group, placement_group, placement_group_table,
    remove_placement_group,
)
from zray.util.placement_group import get_placement_group
from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from zray.util.state import list_tasks

pytestmark = pytest.mark.timeout(150)


def in_group(pg, index=-1, capture=None):
    return PlacementGroupSchedulingStrategy(pg, index, capture)


def free_cpus() -> float:
    return zray.available_resources().get("CPU", 0)


def state_of(pg) -> str:
    return placement_group_table(pg)["state"]


@zray.remote(num_cpus=1)
def where():
    return zray.get_runtime_context().get_node_id()


@zray.remote(num_cpus=1, max_retries=1)
def stays_on(doomed_node):
    """Runs until its node dies if it is on ``doomed_node``; elsewhere, says where."""
    here = zray.get_runtime_context().get_node_id()
    while here == doomed_node:
        time.sleep(0.1)  # until this node is killed with the worker
    return here


@zray.remote(num_cpus=0)
def current_group():
    pg = get_current_placement_group()
    return None if pg is None else pg.id.hex()


@zray.remote(num_cpus=0)
def parent_of_child():
    return zray.get(current_group.remote())


@zray.remote(num_cpus=0)
def group_of_an_actor_made_here():
    holder = Holder.remote()
    return zray.get(holder.group.remote())


@zray.remote(num_cpus=0)
class Holder:
    def group(self):
        pg = get_current_placement_group()
        return None if pg is None else pg.id.hex()


# ---------------------------------------------------------------------- one node
@pytest.fixture(scope="class")
def local():
    zray.init(num_cpus=4)
    yield
    zray.shutdown()


@pytest.mark.usefixtures("local")
class TestLocal:
    def test_ready_wait_and_table(self):
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], name="pair")
        assert isinstance(pg, PlacementGroup)
        assert pg.bundle_count == 2 and pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
        assert zray.get(pg.ready(), timeout=30) == pg
        assert pg.wait(30)
        row = placement_group_table(pg)
        assert row["state"] == "CREATED" and row["strategy"] == "PACK"
        assert row["name"] == "pair" and row["placement_group_id"] == pg.id.hex()
        node = zray.get_runtime_context().get_node_id()
        assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
        assert row["bundles_to_node_id"] == {0: node, 1: node}
        assert pg.id.hex() in placement_group_table()
        assert get_placement_group("pair") == pg
        assert eventually(lambda: free_cpus() == 2)
        remove_placement_group(pg)
        assert state_of(pg) == "REMOVED"
        assert eventually(lambda: free_cpus() == 4)
        with pytest.raises(ValueError):
            get_placement_group("pair")

    def test_tasks_run_in_their_bundles_and_know_their_group(self):
        pg = placement_group([{"CPU": 1}, {"CPU": 2}])
        assert pg.wait(30)
        assert zray.get(current_group.remote(), timeout=30) is None
        assert get_current_placement_group() is None  # a driver is in no group
        for index in (-1, 0, 1):
            got = current_group.options(scheduling_strategy=in_group(pg, index)).remote()
            assert zray.get(got, timeout=30) == pg.id.hex()
        legacy = current_group.options(placement_group=pg, placement_group_bundle_index=1)
        assert zray.get(legacy.remote(), timeout=30) == pg.id.hex()
        # Two 1-CPU tasks at once in bundle 1 (2 CPUs), while the node's free pool is 1.
        two = [where.options(scheduling_strategy=in_group(pg, 1)).remote() for _ in range(2)]
        assert len(zray.get(two, timeout=30)) == 2
        with pytest.raises(ValueError, match="bundle 0"):
            where.options(num_cpus=2, scheduling_strategy=in_group(pg, 0))
        with pytest.raises(ValueError, match="any bundle"):
            where.options(num_cpus=3, scheduling_strategy=in_group(pg))
        remove_placement_group(pg)

    def test_child_tasks_are_captured_only_when_asked(self):
        pg = placement_group([{"CPU": 1}])
        assert pg.wait(30)
        captured = parent_of_child.options(scheduling_strategy=in_group(pg, capture=True))
        assert zray.get(captured.remote(), timeout=30) == pg.id.hex()
        free = parent_of_child.options(scheduling_strategy=in_group(pg))
        assert zray.get(free.remote(), timeout=30) is None
        maker = group_of_an_actor_made_here.options(scheduling_strategy=in_group(pg, 0, True))
        assert zray.get(maker.remote(), timeout=30) == pg.id.hex()
        maker = group_of_an_actor_made_here.options(scheduling_strategy=in_group(pg, 0))
        assert zray.get(maker.remote(), timeout=30) is None
        remove_placement_group(pg)

    def test_removing_a_group_kills_its_actor_and_frees_its_resources(self):
        pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")
        assert pg.wait(30)
        actor = Holder.options(scheduling_strategy=in_group(pg, 0)).remote()
        assert zray.get(actor.group.remote(), timeout=30) == pg.id.hex()
        assert eventually(lambda: free_cpus() == 2)
        remove_placement_group(pg)
        assert eventually(lambda: free_cpus() == 4)
        with pytest.raises(exceptions.RayActorError):
            zray.get(actor.group.remote(), timeout=30)
        # A task submitted to a removed group fails instead of waiting forever.
        with pytest.raises(exceptions.TaskUnschedulableError):
            zray.get(where.options(scheduling_strategy=in_group(pg)).remote(), timeout=30)

    def test_a_group_that_does_not_fit_waits_until_resources_free(self):
        big = placement_group([{"CPU": 3}])
        assert big.wait(30)
        waiting = placement_group([{"CPU": 1}, {"CPU": 1}])
        ready = waiting.ready()
        assert not waiting.wait(0.5)
        assert zray.wait([ready], timeout=0.5)[0] == []
        row = placement_group_table(waiting)
        assert row["state"] == "PENDING" and row["bundles_to_node_id"] == {}
        assert free_cpus() == 1  # nothing of it is held while it waits
        remove_placement_group(big)
        assert zray.get(ready, timeout=30) == waiting
        assert state_of(waiting) == "CREATED"
        remove_placement_group(waiting)

    def test_competing_groups_never_hold_part_of_what_they_need(self):
        groups = [placement_group([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}]) for _ in range(3)]
        assert eventually(lambda: [state_of(g) for g in groups].count("CREATED") == 1)
        for g in groups:
            row = placement_group_table(g)
            if row["state"] == "PENDING":
                assert row["bundles_to_node_id"] == {}
        for _ in range(3):
            created = next(g for g in groups if state_of(g) == "CREATED")
            remove_placement_group(created)
            groups.remove(created)
            if groups:
                assert eventually(lambda: any(state_of(g) == "CREATED" for g in groups),
                                  within=30)
        assert eventually(lambda: free_cpus() == 4)

    def test_strict_spread_on_one_node_stays_pending(self):
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert not pg.wait(0.5)
        assert state_of(pg) == "PENDING"
        remove_placement_group(pg)
        assert state_of(pg) == "REMOVED"

    def test_the_state_api_lists_groups(self):
        from zray._private import state_cli
        from zray.util.state.api import list_placement_groups

        pg = placement_group([{"CPU": 1}], name="listed")
        assert pg.wait(30)
        rows = list_placement_groups(filters=[("name", "=", "listed")])
        assert [(r.placement_group_id, r.state) for r in rows] == [(pg.id.hex(), "CREATED")]
        assert rows[0].bundles[0]["resources"] == {"CPU": 1.0}
        assert "listed" in state_cli.format_rows("placement_groups", rows, 1, "table")
        remove_placement_group(pg)
        assert list_placement_groups(filters=[("name", "=", "listed"),
                                              ("state", "=", "CREATED")]) == []

    def test_bad_arguments_fail_in_the_callers_line(self):
        with pytest.raises(ValueError):
            placement_group([])
        with pytest.raises(ValueError):
            placement_group([{"CPU": 1}], strategy="EVERYWHERE")
        with pytest.raises(ValueError):
            placement_group([{"CPU": 1}], lifetime="forever")
        pg = placement_group([{"CPU": 1}])
        with pytest.raises(ValueError, match="out of range"):
            in_group(pg, 1)
        remove_placement_group(pg)


# ---------------------------------------------------------------------- a cluster
@pytest.fixture(scope="class")
def cluster():
    one = ["--num-cpus", "1", "--object-store-memory", str(200 << 20)]
    with running("zpg", ["--num-cpus", "1", "--no-dashboard", "--object-store-memory",
                         str(200 << 20)], [one, one], cpus=3) as c:
        yield c


DRIVER = textwrap.dedent("""
    import sys
    import zray
    from zray.util import placement_group

    zray.init(address=sys.argv[1])
    mine = placement_group([{"CPU": 1}], name="of_the_job")
    kept = placement_group([{"CPU": 1}], name="detached_one", lifetime="detached")
    assert mine.wait(30) and kept.wait(30)
    print(mine.id.hex(), kept.id.hex(), flush=True)
""")


def alive_nodes() -> list:
    return [n["NodeID"] for n in zray.nodes() if n["Alive"]]


@pytest.mark.usefixtures("cluster")
class TestCluster:
    def test_strict_spread_puts_each_bundle_on_its_own_node(self):
        pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        assert pg.wait(60)
        nodes = placement_group_table(pg)["bundles_to_node_id"]
        assert len(set(nodes.values())) == 3
        for index in range(3):
            ran = where.options(scheduling_strategy=in_group(pg, index)).remote()
            assert zray.get(ran, timeout=60) == nodes[index]
        remove_placement_group(pg)
        assert eventually(lambda: free_cpus() == 3)

    def test_strict_pack_and_a_fourth_strict_spread_bundle(self):
        pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_PACK")
        assert pg.wait(60)
        nodes = placement_group_table(pg)["bundles_to_node_id"]
        assert len(set(nodes.values())) == 1
        ran = zray.get([where.options(num_cpus=0.5, scheduling_strategy=in_group(pg, i))
                        .remote() for i in (0, 1)], timeout=60)
        assert ran == [nodes[0], nodes[1]]
        remove_placement_group(pg)
        too_wide = placement_group([{"CPU": 0.1}] * 4, strategy="STRICT_SPREAD")
        assert not too_wide.wait(0.5)  # three nodes
        remove_placement_group(too_wide)

    def test_zray_list_placement_groups_shows_them(self, cluster):
        pg = placement_group([{"CPU": 0.5}], strategy="PACK", name="listed_group")
        assert pg.wait(60)
        try:
            out = cluster.zray("list", "placement-groups", "--format", "json").stdout
            rows = {row["name"]: row for row in json.loads(out)}
            assert rows["listed_group"]["state"] == "CREATED"
            assert rows["listed_group"]["placement_group_id"] == pg.id.hex()
            assert "listed_group" in cluster.zray("list", "placement-groups").stdout
        finally:
            remove_placement_group(pg)

    def test_a_jobs_group_goes_with_it_unless_detached(self, cluster):
        out = subprocess.run([sys.executable, "-c", DRIVER, cluster.address],
                             env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                             text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        mine, kept = out.stdout.split()
        table = placement_group_table()
        assert table[kept]["is_detached"]
        assert eventually(lambda: placement_group_table()[mine]["state"] == "REMOVED",
                          within=30)
        assert placement_group_table()[kept]["state"] == "CREATED"
        assert eventually(lambda: free_cpus() == 2, within=30)
        remove_placement_group(get_placement_group("detached_one"))
        assert eventually(lambda: free_cpus() == 3, within=30)

    def test_a_bundle_on_a_dead_node_is_reserved_again(self, cluster):
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert pg.wait(60)
        nodes = placement_group_table(pg)["bundles_to_node_id"]
        workers = [r for r in cluster.records() if r["kind"] == "worker"]
        doomed = next(r for r in workers if r["node_id"] in nodes.values())
        lost = next(i for i, n in nodes.items() if n == doomed["node_id"])
        stuck = stays_on.options(scheduling_strategy=in_group(pg, lost)).remote(
            doomed["node_id"])
        assert eventually(lambda: any(t.state == "RUNNING" for t in list_tasks(
            filters=[("name", "=", "stays_on")])), within=60)
        os.kill(doomed["procs"][0]["pid"], signal.SIGKILL)

        def moved() -> bool:
            row = placement_group_table(pg)
            return row["state"] == "CREATED" and doomed["node_id"] not in \
                row["bundles_to_node_id"].values()
        assert eventually(moved, within=60)
        now = placement_group_table(pg)["bundles_to_node_id"]
        assert len(set(now.values())) == 2 and now[1 - lost] == nodes[1 - lost]
        ran = where.options(scheduling_strategy=in_group(pg, lost)).remote()
        assert zray.get(ran, timeout=60) == now[lost]
        # The task that was running there ran again, in the bundle's new place.
        assert zray.get(stuck, timeout=60) == now[lost]
        remove_placement_group(pg)
