"""Scheduling strategies a task or actor can ask for (``scheduling_strategy=``).

    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    f.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

Besides these classes, ``scheduling_strategy`` takes the strings ``"DEFAULT"``
and ``"SPREAD"``.  Each class says how it travels in a task spec with
``to_wire()`` (see ``protocol.TaskSpec.scheduling_strategy``).  A
``PlacementGroupSchedulingStrategy`` also changes what the task demands: the
resources of its group's bundles (see ``demand_in_group``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``get_runtime_context().get_node_id()``
    gives it).  With ``soft=True`` another node may run it when that one cannot
    (it is dead, or could never fit the demand); with ``soft=False`` the task
    fails instead."""

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if hasattr(node_id, "hex") and not isinstance(node_id, str):
            node_id = node_id.hex()  # a NodeID
        if not isinstance(node_id, str):
            raise TypeError(f"NodeAffinitySchedulingStrategy: node_id must be a hex string, "
                            f"got {type(node_id).__name__}")
        try:
            bytes.fromhex(node_id)
        except ValueError:
            raise ValueError(f"NodeAffinitySchedulingStrategy: node_id must be a hex string, "
                             f"got {node_id!r}") from None
        if not isinstance(soft, bool):
            raise TypeError(f"NodeAffinitySchedulingStrategy: soft must be a bool, got {soft!r}")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def to_wire(self) -> List[Any]:
        return ["NODE", bytes.fromhex(self.node_id), self.soft]

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, NodeAffinitySchedulingStrategy)
                and (other.node_id, other.soft) == (self.node_id, self.soft))

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run in a placement group: in bundle ``placement_group_bundle_index`` (-1: any
    bundle).  With ``placement_group_capture_child_tasks``, tasks and actors this one
    submits without a strategy of their own go in the same group."""

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: Optional[bool] = None) -> None:
        from zray.util.placement_group import PlacementGroup

        if not isinstance(placement_group, PlacementGroup):
            raise TypeError(f"PlacementGroupSchedulingStrategy: placement_group must be a "
                            f"PlacementGroup, got {type(placement_group).__name__}")
        index = placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, int) or index < -1:
            raise ValueError(f"PlacementGroupSchedulingStrategy: placement_group_bundle_index "
                             f"must be an int >= -1, got {index!r}")
        known = placement_group._bundles
        if known is not None and index >= len(known):
            raise ValueError(f"placement_group_bundle_index {index} is out of range: the "
                             f"placement group has {len(known)} bundle(s)")
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def to_wire(self) -> List[Any]:
        return ["PG", self.placement_group.id.binary(), self.placement_group_bundle_index,
                bool(self.placement_group_capture_child_tasks)]

    def demand_in_group(self, demand: Dict[str, float], where: str) -> Dict[str, float]:
        """What a task or actor needing ``demand`` asks for in this group (the group's
        named resources); ValueError if its bundle could never hold it."""
        from zray._private import bundles, state

        pg, index = self.placement_group, self.placement_group_bundle_index
        known = pg._bundles
        if known is None and state.client is not None:
            known = pg.bundle_specs  # asked of the head once (a handle from elsewhere)
        if known and index >= len(known):
            raise ValueError(f"placement_group_bundle_index {index} is out of range: the "
                             f"placement group has {len(known)} bundle(s)")
        if known and not bundles.fits_bundle(demand, known, index):
            which = f"bundle {index}" if index >= 0 else "any bundle"
            raise ValueError(
                f"{where} cannot be scheduled in placement group {pg.id.hex()[:8]}: it needs "
                f"{demand}, more than {which} of the group has ({known})")
        return bundles.task_demand(demand, pg.id.hex(), index)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, PlacementGroupSchedulingStrategy) \
            and other.to_wire() == self.to_wire()

    def __hash__(self) -> int:
        return hash(tuple(self.to_wire()))

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy(placement_group={self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index}, "
                f"placement_group_capture_child_tasks="
                f"{self.placement_group_capture_child_tasks})")


__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
