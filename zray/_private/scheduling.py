"""Where tasks may run and where they should: the placement policy.

This module owns the arithmetic of resources (CPU, GPU and custom names),
checking the resource options users pass, handing out GPU ids, and choosing
a node for a task.  It is pure logic: no sockets, no clocks, no processes --
callers pass in a snapshot of the cluster and act on the answer.

Quantities are held as integer *units* (``UNIT`` per whole resource) so that
adding and removing fractions never drifts: ten tasks of 0.1 CPU fill exactly
one CPU, which with floats they would not.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Integer units per whole resource; also the finest fraction that can be asked for.
UNIT = 10_000

#: Decimal places a requested quantity keeps (log10 of UNIT).
PRECISION = 4

#: Resources with their own option; they may not appear in ``resources=``.
_BUILTIN_OPTIONS = {"CPU": "num_cpus", "GPU": "num_gpus"}


# -------------------------------------------------------------------- arithmetic


def to_units(resources: Mapping[str, float]) -> dict[str, int]:
    """Resource amounts as integer units, leaving out those that are zero."""
    units = {}
    for name, amount in resources.items():
        count = round(amount * UNIT)
        if count:
            units[name] = count
    return units


def from_units(units: Mapping[str, int]) -> dict[str, float]:
    """Integer units back to resource amounts."""
    return {name: count / UNIT for name, count in units.items()}


def fits(available: Mapping[str, int], demand: Mapping[str, int]) -> bool:
    """Whether every resource in ``demand`` is available in that quantity."""
    return all(available.get(name, 0) >= count for name, count in demand.items() if count > 0)


def acquire(available: dict[str, int], demand: Mapping[str, int]) -> None:
    """Take ``demand`` out of ``available``.

    The caller checks fits() first when it matters; a forced acquire (a
    worker blocked in get() taking its CPU back) may leave counts negative.
    """
    for name, count in demand.items():
        available[name] = available.get(name, 0) - count


def release(available: dict[str, int], demand: Mapping[str, int]) -> None:
    """Give ``demand`` back to ``available``."""
    for name, count in demand.items():
        available[name] = available.get(name, 0) + count


def missing(total: Mapping[str, int], demand: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    """Resources a node could never provide: name -> (needed, total), as amounts.

    An empty result means the demand fits the node when it is idle.
    """
    return {
        name: (count / UNIT, total.get(name, 0) / UNIT)
        for name, count in demand.items()
        if count > total.get(name, 0)
    }


# -------------------------------------------------------------------- validation


def validate_resource_request(
    num_cpus: Any,
    num_gpus: Any,
    resources: Any,
    *,
    where: str,
) -> dict[str, float]:
    """Check the resource options of a task or actor and build its demand.

    ``num_cpus`` / ``num_gpus`` of None mean "not given" and are left out, so
    the caller can apply its own defaults; an explicit 0 is kept.  ``where``
    names the thing being configured and starts every error message.

    Raises ValueError for anything Ray would reject: negative or non-numeric
    amounts (bools included), amounts above 1 that are not whole numbers,
    "CPU"/"GPU" given through ``resources``, and names that are not
    non-empty strings.  Amounts are rounded to 4 decimal places.
    """
    demand: dict[str, float] = {}
    if num_cpus is not None:
        demand["CPU"] = _checked_amount(num_cpus, "num_cpus", where)
    if num_gpus is not None:
        demand["GPU"] = _checked_amount(num_gpus, "num_gpus", where)
    if resources is None:
        return demand
    # ValueError even for wrong types: every bad option is reported the same way.
    if not isinstance(resources, Mapping):
        raise ValueError(  # noqa: TRY004
            f"{where}: resources must be a dict of name -> amount, got {type(resources).__name__}")
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: resource names must be non-empty strings, got {name!r}")
        if name in _BUILTIN_OPTIONS:
            raise ValueError(
                f"{where}: use {_BUILTIN_OPTIONS[name]} instead of resources[{name!r}]")
        demand[name] = _checked_amount(amount, f"resources[{name!r}]", where)
    return demand


def _checked_amount(value: Any, field_name: str, where: str) -> float:
    # bool is an int subclass, but num_gpus=True is a mistake, not "1 GPU".
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: {field_name} must be a number, got {value!r}")  # noqa: TRY004
    amount = float(value)
    if not math.isfinite(amount):
        raise ValueError(f"{where}: {field_name} must be a finite number, got {value!r}")
    if amount < 0:
        raise ValueError(f"{where}: {field_name} must not be negative, got {value!r}")
    amount = round(amount, PRECISION)
    if amount > 1 and not amount.is_integer():
        raise ValueError(
            f"{where}: {field_name} above 1 must be a whole number, got {value!r}")
    return amount


# -------------------------------------------------------------------------- GPUs


class GpuPool:
    """Assigns GPU ids to a demand: whole GPUs get distinct free ids; a fraction shares one id with other fractions while their sum <= 1."""

    def __init__(self, gpu_ids: Sequence[int]) -> None:
        if len(set(gpu_ids)) != len(gpu_ids):
            raise ValueError(f"GPU ids must be distinct, got {list(gpu_ids)}")
        self._used: dict[int, int] = {gpu: 0 for gpu in gpu_ids}   # id -> units taken

    @property
    def gpu_ids(self) -> list[int]:
        return list(self._used)

    @property
    def free_capacity(self) -> float:
        """GPUs not assigned, counting the free parts of shared ones."""
        return sum(UNIT - used for used in self._used.values()) / UNIT

    def assign(self, amount: float) -> list[int] | None:
        """GPU ids for ``amount`` GPUs, or None if they are not free now."""
        units = _gpu_units(amount)
        if units == 0:
            return []
        if units < UNIT:
            return self._assign_fraction(units)
        idle = [gpu for gpu, used in self._used.items() if used == 0]
        wanted = units // UNIT
        if len(idle) < wanted:
            return None
        chosen = idle[:wanted]
        for gpu in chosen:
            self._used[gpu] = UNIT
        return chosen

    def release(self, ids: Sequence[int], amount: float) -> None:
        """Give back what assign(amount) returned as ``ids``."""
        units = _gpu_units(amount)
        share = min(units, UNIT)   # a whole GPU per id, or the one shared fraction
        for gpu in ids:
            if gpu not in self._used:
                raise ValueError(f"GPU {gpu} is not in this pool")
            if self._used[gpu] < share:
                raise ValueError(f"GPU {gpu} has less than {share / UNIT} assigned")
        for gpu in ids:
            self._used[gpu] -= share

    def _assign_fraction(self, units: int) -> list[int] | None:
        # Best fit: the fullest GPU the fraction still fits on, so whole GPUs
        # stay idle for whole-GPU tasks; ties go to the first id listed.
        best = None
        for gpu, used in self._used.items():
            if used + units <= UNIT and (best is None or used > self._used[best]):
                best = gpu
        if best is None:
            return None
        self._used[best] += units
        return [best]


def _gpu_units(amount: float) -> int:
    if amount < 0:
        raise ValueError(f"GPU amount must not be negative, got {amount}")
    units = round(amount * UNIT)
    if units > UNIT and units % UNIT:
        raise ValueError(f"GPU amount above 1 must be a whole number, got {amount}")
    return units


# --------------------------------------------------------------------- placement


@dataclass
class NodeLoad:
    """What placement needs to know about one node, in resource units."""

    node_id: bytes
    total: dict[str, int]
    available: dict[str, int]
    queued: int = 0         # tasks waiting on that node
    alive: bool = True
    local_bytes: int = 0    # bytes of the task's large arguments already on that node (locality)


def _cpu_free_fraction(node: NodeLoad) -> float:
    total = node.total.get("CPU", 0)
    if total <= 0:
        return 0.0
    return node.available.get("CPU", 0) / total


def _rank(node: NodeLoad, prefer: bytes | None) -> tuple[Any, ...]:
    """Sort key among nodes the task fits on now; the smallest is the best."""
    return (
        -node.local_bytes,                # moving big arguments costs most
        node.node_id != prefer,           # then stay on the submitting node
        -_cpu_free_fraction(node),        # then the least busy
        node.queued,
        node.node_id,                     # deterministic tie break
    )


def choose_node(
    nodes: Sequence[NodeLoad],
    demand: Mapping[str, int],
    *,
    prefer: bytes | None = None,
) -> bytes | None:
    """The node a task with ``demand`` should go to, or None if no alive node could ever run it.

    Nodes where it fits now win; among them the one holding most of its
    arguments, then ``prefer`` (the submitting node), then the least loaded.
    If it fits nowhere now, it goes to the node that could run it with the
    shortest queue, to wait there.
    """
    feasible = [node for node in nodes if node.alive and fits(node.total, demand)]
    if not feasible:
        return None
    ready = [node for node in feasible if fits(node.available, demand)]
    if ready:
        return min(ready, key=lambda node: _rank(node, prefer)).node_id
    return min(feasible, key=lambda node: (node.queued, node.node_id != prefer, node.node_id)).node_id


def should_spill(
    local: NodeLoad,
    others: Sequence[NodeLoad],
    demand: Mapping[str, int],
) -> bytes | None:
    """The node a saturated ``local`` node should hand a task to, or None to keep it.

    Only when the task does not fit locally now and tasks are already
    waiting here, and only to an alive node where it fits now.
    """
    if local.queued <= 0 or fits(local.available, demand):
        return None
    ready = [
        node for node in others
        if node.alive and node.node_id != local.node_id and fits(node.available, demand)
    ]
    if not ready:
        return None
    return min(ready, key=lambda node: _rank(node, None)).node_id


class Unschedulable(Exception):
    """A task's scheduling strategy names a placement no alive node can honour."""


def choose_by_strategy(
    nodes: Sequence[NodeLoad],
    demand: Mapping[str, int],
    strategy: Sequence[Any] | None,
    spread_counts: dict[bytes, int],
    *,
    prefer: bytes | None = None,
) -> bytes | None:
    """The node for a task placed by a scheduling strategy (None: wait for one).

    ``["NODE", node_id, soft]`` runs it on that node if it is alive and could
    ever run it; otherwise a soft affinity is placed as usual and a hard one
    raises Unschedulable.  ``["SPREAD"]`` goes to the feasible node that has
    been given the fewest spread tasks so far (``spread_counts``, updated
    here), the least loaded first among equals.  Anything else: choose_node (a task in
    a placement group, ``["PG", ...]``, demands its group's resources: see bundles.py).
    """
    kind = strategy[0] if strategy else "DEFAULT"
    if kind == "NODE":
        target = next((n for n in nodes if n.node_id == strategy[1]), None)
        if target is not None and target.alive and fits(target.total, demand):
            return target.node_id
        if not strategy[2]:
            raise Unschedulable(
                f"node {bytes(strategy[1]).hex()[:8]} is not alive, or cannot run a task "
                f"needing {from_units(demand)}, and its node affinity is not soft")
    elif kind == "SPREAD":
        feasible = [n for n in nodes if n.alive and fits(n.total, demand)]
        if not feasible:
            return None
        best = min(feasible, key=lambda n: (spread_counts.get(n.node_id, 0),
                                            -_cpu_free_fraction(n), n.queued, n.node_id))
        spread_counts[best.node_id] = spread_counts.get(best.node_id, 0) + 1
        return best.node_id
    return choose_node(nodes, demand, prefer=prefer)
