"""Scheduling strategies a task or actor can ask for (``scheduling_strategy=``).

    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    f.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

Besides these classes, ``scheduling_strategy`` takes the strings ``"DEFAULT"``
and ``"SPREAD"``.  Each class says how it travels in a task spec with
``to_wire()`` (see ``protocol.TaskSpec.scheduling_strategy``).  Placement
groups are not supported.
"""

from __future__ import annotations

from typing import Any, List


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


__all__ = ["NodeAffinitySchedulingStrategy"]
