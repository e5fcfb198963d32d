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
        known = (demand, gpus_of(resources), tuple(sorted(demand.items())))
        if len(_demands) < 10_000:  # bounded: resource specs are few in practice
            _demands[key] = known
    return known


def gpus_of(resources: dict) -> float:
    """GPUs a task gets ids for: ``GPU``, or its placement group bundle's GPUs (the
    bundle reserved them; their ids are handed out when a task runs)."""
    gpus = resources.get("GPU", 0)
    if not gpus:
        gpus = next((amount for name, amount in resources.items()
                     if name.startswith("GPU_group_")), 0)
    return float(gpus)


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

    # ------------------------------------------------------------ placement group bundles
    def reserve(self, demand: Dict[str, int]) -> bool:
        """Take a bundle out of the free pool if it fits now (a PREPARE)."""
        if not scheduling.fits(self.available, demand):
            return False
        scheduling.acquire(self.available, demand)
        return True

    def unreserve(self, demand: Dict[str, int]) -> None:
        scheduling.release(self.available, demand)

    def add_named(self, amounts: Dict[str, float]) -> None:
        """A committed bundle's resources, named after its group: new totals here."""
        units = scheduling.to_units(amounts)
        scheduling.release(self.total, units)
        scheduling.release(self.available, units)
        declared = dict(self.declared)
        for name, amount in amounts.items():
            declared[name] = round(declared.get(name, 0) + amount, scheduling.PRECISION)
        self.declared = declared
        self.missing_by_shape.clear()

    def remove_named(self, amounts: Dict[str, float]) -> None:
        """A released bundle's named resources go (tasks still holding some give
        them back to a name nobody asks for any more)."""
        units = scheduling.to_units(amounts)
        scheduling.acquire(self.total, units)
        scheduling.acquire(self.available, units)
        declared = dict(self.declared)
        for name, amount in amounts.items():
            left = round(declared.get(name, 0) - amount, scheduling.PRECISION)
            if left > 0:
                declared[name] = left
            else:
                declared.pop(name, None)
        for table in (self.total, self.available):
            for name in [n for n in units if table.get(n, 0) <= 0 and n in table]:
                del table[name]
        self.declared = declared
        self.missing_by_shape.clear()
