"""What this node has and what is free: the local scheduler's ledger.

Owns: the node's total and available resource units and its GPU ids.
Must not: pick tasks or workers (the dispatcher does); it only counts.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from zray._private import scheduling

_DEFAULT_DEMAND = {"CPU": 1.0}
_demands: Dict[tuple, tuple] = {}


def demand_of(resources: Optional[dict]) -> tuple:
    """(demand in units, GPUs, shape) of a task's resources, computed once per kind.

    Tasks share the demand dict: nobody changes it.
    """
    if resources is None:
        resources = _DEFAULT_DEMAND  # an empty dict is a task that needs nothing
    key = tuple(resources.items())
    known = _demands.get(key)
    if known is None:
        demand = scheduling.to_units(resources)
        known = (demand, float(resources.get("GPU", 0)), tuple(sorted(demand.items())))
        if len(_demands) < 10_000:  # bounded: resource specs are few in practice
            _demands[key] = known
    return known


class NodeResources:
    def __init__(self, resources: Dict[str, float], gpu_ids: List[int]) -> None:
        self.declared = resources
        self.total = scheduling.to_units(resources)
        self.available = dict(self.total)
        self.gpus = scheduling.GpuPool(gpu_ids)
        self.missing_by_shape: Dict[tuple, dict] = {}

    def cpus(self) -> int:
        """Whole CPUs free now (at least 1: a worker is always worth having)."""
        return max(1, self.available.get("CPU", 0) // scheduling.UNIT)

    def missing(self, demand: Dict[str, int], shape: tuple) -> dict:
        """What this node can never provide for a demand (empty: it fits when idle)."""
        missing = self.missing_by_shape.get(shape)
        if missing is None:
            missing = self.missing_by_shape[shape] = scheduling.missing(self.total, demand)
        return missing

    def fits(self, demand: Dict[str, int]) -> bool:
        return scheduling.fits(self.available, demand)

    def acquire(self, demand: Dict[str, int]) -> None:
        scheduling.acquire(self.available, demand)

    def release(self, demand: Dict[str, int]) -> None:
        scheduling.release(self.available, demand)

    def assign_gpus(self, amount: float) -> Optional[List[int]]:
        return self.gpus.assign(amount)

    def release_gpus(self, ids: List[int], amount: float) -> None:
        if ids or amount:
            self.gpus.release(ids, amount)

    def as_amounts(self) -> Dict[str, float]:
        return scheduling.from_units(self.available)
