"""Placement groups: reserve bundles of resources across nodes, all or none.

    from zray.util import placement_group, remove_placement_group
    from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    zray.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()

The head keeps the groups and reserves their bundles (``head_pgs``); a
reserved bundle is resources of its node named after the group
(``bundles.group_resources``), and a task in a group simply demands those
names (``PlacementGroupSchedulingStrategy.demand_in_group``), so the
ordinary schedulers place it.  Requests go to the head through this
process's node agent (PG_REQUEST).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Union

from zray._private import bundles as bundle_policy
from zray._private import ids, state
from zray.object_ref import BaseID

_WAIT_SLICE = 30.0   # the head answers a wait at least this often


class PlacementGroupID(BaseID):
    __slots__ = ()


def _client() -> Any:
    client = state.client
    if client is None:
        from zray import _auto_init

        client = _auto_init()
    return client


def _ask(action: str, request_timeout: float = 60.0, **fields: Any) -> dict:
    from zray._private.protocol import Op

    _, reply, _ = _client().request(Op.PG_REQUEST, dict(fields, action=action),
                                    timeout=request_timeout)
    return reply


class PlacementGroup:
    """A handle to a placement group: picklable, comparable by ID."""

    def __init__(self, id: PlacementGroupID,
                 bundle_specs: Optional[List[Dict[str, float]]] = None) -> None:
        self.id = id
        self._bundles = bundle_specs

    @staticmethod
    def empty() -> "PlacementGroup":
        return PlacementGroup(PlacementGroupID.nil())

    def is_empty(self) -> bool:
        return self.id.is_nil()

    @property
    def bundle_specs(self) -> List[Dict[str, float]]:
        """The bundles, as asked for."""
        if self._bundles is None:
            rows = _ask("table", pg_id=self.id.binary()).get("groups", [])
            self._bundles = [dict(b) for b in rows[0]["bundles"]] if rows else []
        return self._bundles

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> Any:
        """An ObjectRef that becomes ready (with this handle) once the group is reserved."""
        from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return _reservation_check().options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self, 0)).remote(self)

    def wait(self, timeout_seconds: Union[float, int] = 30) -> bool:
        """Whether the group is reserved within ``timeout_seconds`` (None: no limit)."""
        import time

        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        while True:
            left = _WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            reply = _ask("wait", request_timeout=min(left, _WAIT_SLICE) + 30,
                         pg_id=self.id.binary(), timeout=float(min(left, _WAIT_SLICE)))
            if reply.get("ready"):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            state_now = _ask("table", pg_id=self.id.binary())["groups"][0]["group_state"]
            if state_now == "REMOVED":
                return False

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()})"

    def __reduce__(self):
        return (PlacementGroup, (self.id, self._bundles))


_check_function: Any = None


def _bundle_reservation_check(pg: PlacementGroup) -> PlacementGroup:
    return pg


def _reservation_check() -> Any:
    global _check_function
    if _check_function is None:
        from zray.remote_function import RemoteFunction

        _check_function = RemoteFunction(_bundle_reservation_check,
                                         {"num_cpus": 0, "max_retries": 0})
    return _check_function


# ---------------------------------------------------------------------- the API
def placement_group(bundles: List[Dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: Optional[str] = None, _soft_target_node_id: Any = None,
                    bundle_label_selector: Any = None) -> PlacementGroup:
    """Reserve ``bundles`` (a list of resource dicts) on the cluster's nodes as
    ``strategy`` says (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD); returns at once,
    with the group PENDING until every bundle is reserved (see ``ready``/``wait``).
    ``lifetime="detached"`` keeps it after the job that made it ends."""
    checked = bundle_policy.check_bundles(bundles)
    if strategy not in bundle_policy.STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}: expected one of "
                         f"{', '.join(bundle_policy.STRATEGIES)}")
    if not isinstance(name, str):
        raise TypeError(f"placement_group: name must be a string, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement_group: lifetime must be None or 'detached', "
                         f"got {lifetime!r}")
    client = _client()
    pg_id = ids.new_id()
    _ask("create", pg_id=pg_id, name=name, strategy=strategy, bundles=checked,
         detached=lifetime == "detached", job_id=client.job_id)
    return PlacementGroup(PlacementGroupID(pg_id), checked)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group's bundles; its actors are killed and its tasks not yet
    finished fail."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, "
                        f"got {type(placement_group).__name__}")
    _ask("remove", pg_id=placement_group.id.binary())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named so; ValueError if there is none."""
    row = _ask("get", name=placement_group_name)["groups"][0]
    return PlacementGroup(PlacementGroupID(row["pg_id"]), [dict(b) for b in row["bundles"]])


def _table_row(row: dict) -> dict:
    nodes = row.get("bundle_nodes", [])
    return {
        "placement_group_id": row["pg_id"].hex(),
        "name": row.get("name", ""),
        "bundles": {i: dict(b) for i, b in enumerate(row.get("bundles", []))},
        "bundles_to_node_id": {i: n.hex() for i, n in enumerate(nodes) if n},
        "strategy": row.get("strategy", ""),
        "state": row.get("group_state", ""),
        "is_detached": bool(row.get("detached")),
        "job_id": row.get("job_id", b"").hex(),
        "stats": {"scheduling_state": "FINISHED" if row.get("group_state") == "CREATED"
                  else row.get("group_state", "")},
    }


def placement_group_table(placement_group: Optional[PlacementGroup] = None) -> dict:
    """One group's entry (Ray's shape), or every group's, keyed by ID in hex."""
    if placement_group is not None:
        rows = _ask("table", pg_id=placement_group.id.binary()).get("groups", [])
        return _table_row(rows[0]) if rows else {}
    rows = _ask("table").get("groups", [])
    return {row["pg_id"].hex(): _table_row(row) for row in rows}


def state_rows() -> List[dict]:
    """Every group as a row of the state API (``list_placement_groups``)."""
    rows = []
    for row in _ask("table").get("groups", []):
        table = _table_row(row)
        table["bundles"] = [{"bundle_index": i, "resources": b,
                             "node_id": table["bundles_to_node_id"].get(i)}
                            for i, b in table["bundles"].items()]
        del table["bundles_to_node_id"]
        rows.append(table)
    return rows


def _running_group() -> Optional[list]:
    """The ``["PG", id, index, capture]`` strategy of the task or actor running here."""
    if state.worker is None:
        return None
    from zray.runtime_context import _running_specs

    for spec in _running_specs():
        strategy = (spec or {}).get("scheduling_strategy")
        if strategy and strategy[0] == "PG":
            return strategy
    return None


def get_current_placement_group() -> Optional[PlacementGroup]:
    """The group the running task or actor was scheduled in (None in a driver, or
    outside any group)."""
    strategy = _running_group()
    if strategy is None:
        return None
    return PlacementGroup(PlacementGroupID(bytes(strategy[1])))


def legacy_strategy(options: Dict[str, Any], where: str) -> None:
    """Ray's older options (``placement_group=``, ``placement_group_bundle_index=``,
    ``placement_group_capture_child_tasks=``) as a scheduling strategy, in place."""
    pg = options.pop("placement_group")
    index = options.pop("placement_group_bundle_index", -1)
    capture = options.pop("placement_group_capture_child_tasks", None)
    if pg is None or pg == "default":
        return
    if options.get("scheduling_strategy") is not None:
        raise ValueError(f"{where}: give placement_group or scheduling_strategy, not both")
    from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, index, capture)


def captured_call(call: Any) -> Any:
    """A task submitted from a task (or actor) in a group that captures child tasks,
    with no strategy of its own, goes in that group too (any bundle)."""
    strategy = _running_group()
    if strategy is None or not strategy[3]:
        return call
    pg = bytes(strategy[1])
    captured = copy.copy(call)
    demand = {"CPU": 1.0} if call.demand is None else call.demand
    captured.demand = bundle_policy.task_demand(demand, pg.hex(), -1)
    captured.extra = dict(call.extra, scheduling_strategy=["PG", pg, -1, True])
    return captured


def actor_demand(options: Dict[str, Any], where: str) -> Dict[str, float]:
    """An actor's demand (none by default), in its group's resources if it has one."""
    from zray._private.options import resource_demand

    demand = resource_demand(options, default_cpus=0)
    strategy = options.get("scheduling_strategy")
    if hasattr(strategy, "demand_in_group"):
        demand = strategy.demand_in_group(demand, where)
    return demand


def captured_actor_strategy(options: Dict[str, Any]) -> Dict[str, Any]:
    """An actor's options, with its creator's group when that captures child tasks."""
    if options.get("scheduling_strategy") is not None or state.worker is None:
        return options
    strategy = _running_group()
    if strategy is None or not strategy[3]:
        return options
    from zray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = PlacementGroup(PlacementGroupID(bytes(strategy[1])))
    return dict(options, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, -1, True))


__all__ = ["PlacementGroup", "PlacementGroupID", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group"]
