"""Placement groups, the pure part: where bundles go and what they are called.

::

    bundles + strategy + free room of each node ──place_bundles──▶ {bundle index: node}
    a committed bundle ──group_resources──▶ resources named after its group, on its node
    a task in a group  ──task_demand──────▶ a demand of those names (no special case after)

A committed bundle becomes resources of its node named after the group
(``CPU_group_<pg>``, summed over the group's bundles on that node) and after
the bundle (``CPU_group_<i>_<pg>``), plus a marker ``bundle_group_<pg>`` (and
``bundle_group_<i>_<pg>``) that every task in the group asks a sliver of, so a
task that needs no CPU still runs where its bundle is.  A task in a group is
then a task demanding those names, placed by the ordinary schedulers.

Pure logic: no sockets, no clocks.  Amounts are scheduling's integer units
where the name says so, plain amounts elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from zray._private import scheduling

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
MARKER = "bundle"          # the resource every bundle adds and every task in a group asks
MARKER_AMOUNT = 1000.0     # per bundle: tasks ask MARKER_SLIVER of it
MARKER_SLIVER = 0.001
_SEARCH_LIMIT = 20_000     # STRICT_SPREAD's search: steps before giving up for now


def wildcard_name(resource: str, pg_hex: str) -> str:
    return f"{resource}_group_{pg_hex}"


def indexed_name(resource: str, index: int, pg_hex: str) -> str:
    return f"{resource}_group_{index}_{pg_hex}"


def is_group_resource(name: str, pg_hex: Optional[str] = None) -> bool:
    """Whether ``name`` is a placement group's resource (of group ``pg_hex``, if given)."""
    if "_group_" not in name:
        return False
    return pg_hex is None or name.endswith("_" + pg_hex)


def mentions_group(demand: Mapping[str, float]) -> bool:
    return any("_group_" in name for name in demand)


def group_resources(bundle: Mapping[str, float], index: int, pg_hex: str) -> Dict[str, float]:
    """The resources a committed bundle adds to its node (amounts)."""
    out: Dict[str, float] = {}
    for name, amount in {**bundle, MARKER: MARKER_AMOUNT}.items():
        out[wildcard_name(name, pg_hex)] = out.get(wildcard_name(name, pg_hex), 0) + amount
        out[indexed_name(name, index, pg_hex)] = amount
    return out


def task_demand(demand: Mapping[str, float], pg_hex: str, index: int) -> Dict[str, float]:
    """A task's demand in a group: in bundle ``index``, or any bundle (-1)."""
    rename = (lambda n: wildcard_name(n, pg_hex)) if index < 0 else \
        (lambda n: indexed_name(n, index, pg_hex))
    out = {rename(name): amount for name, amount in demand.items() if amount}
    out[rename(MARKER)] = MARKER_SLIVER
    return out


def check_bundles(bundles: object) -> List[Dict[str, float]]:
    """Bundles as users give them, checked: a non-empty list of non-empty resource dicts."""
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("placement_group: bundles must be a non-empty list of dicts, "
                         f"got {bundles!r:.60}")
    checked = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping):
            raise ValueError(f"placement_group: bundle {i} must be a dict of resource "
                             f"amounts, got {bundle!r:.60}")
        amounts: Dict[str, float] = {}
        for name, amount in bundle.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"placement_group: bundle {i}: resource names must be "
                                 f"non-empty strings, got {name!r}")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
                    or not amount >= 0 or amount == float("inf"):
                raise ValueError(f"placement_group: bundle {i}: {name} must be a "
                                 f"non-negative number, got {amount!r}")
            if amount:
                amounts[name] = float(amount)
        if not amounts:
            raise ValueError(f"placement_group: bundle {i} is empty: a bundle must ask for "
                             f"some resource, got {bundle!r}")
        checked.append(amounts)
    return checked


def fits_bundle(demand: Mapping[str, float], bundles: Sequence[Mapping[str, float]],
                index: int) -> bool:
    """Whether a task's demand fits bundle ``index`` (-1: some bundle) when idle."""
    want = scheduling.to_units(demand)
    chosen = bundles if index < 0 else [bundles[index]]
    return any(scheduling.fits(scheduling.to_units(b), want) for b in chosen)


# --------------------------------------------------------------------- placement
@dataclass
class Room:
    """A node as bundle placement sees it: alive, and its free resources in units."""

    node_id: bytes
    available: Dict[str, int]
    total: Dict[str, int] = field(default_factory=dict)


def place_bundles(bundles: Sequence[Mapping[str, int]], strategy: str,
                  nodes: Sequence[Room], placed: Optional[Mapping[int, bytes]] = None
                  ) -> Optional[Dict[int, bytes]]:
    """A node for each bundle not already ``placed`` (index -> node), or None if they
    do not all fit now.  ``bundles`` are in units; every bundle is needed at once.

    STRICT_PACK: all of them on one node.  STRICT_SPREAD: each on a node of its own
    (also apart from those already placed).  PACK: one node if possible, else as
    few as possible.  SPREAD: distinct nodes if possible, else as spread as possible.
    """
    placed = dict(placed or {})
    todo = [i for i in range(len(bundles)) if i not in placed]
    if not todo:
        return {}
    free = {n.node_id: dict(n.available) for n in nodes}
    order = sorted(free)  # deterministic
    if strategy == "STRICT_PACK":
        return _pack_on_one(bundles, todo, free, order, set(placed.values()))
    if strategy == "STRICT_SPREAD":
        taken = set(placed.values())
        return _strict_spread(bundles, todo, free, [n for n in order if n not in taken])
    if strategy == "PACK":
        return _pack_on_one(bundles, todo, free, order, set(placed.values())) or \
            _greedy(bundles, todo, free, order, placed, spread=False)
    return _greedy(bundles, todo, free, order, placed, spread=True)


def _total(bundles: Sequence[Mapping[str, int]], todo: Sequence[int]) -> Dict[str, int]:
    need: Dict[str, int] = {}
    for i in todo:
        scheduling.release(need, bundles[i])
    return need


def _pack_on_one(bundles, todo, free, order, already) -> Optional[Dict[int, bytes]]:
    need = _total(bundles, todo)
    candidates = sorted(already) if already else order
    for node in candidates:
        if node in free and scheduling.fits(free[node], need):
            return {i: node for i in todo}
    return None


def _strict_spread(bundles, todo, free, order) -> Optional[Dict[int, bytes]]:
    """A node apiece: a small search, the biggest bundles first."""
    todo = sorted(todo, key=lambda i: -sum(bundles[i].values()))
    if len(todo) > len(order):
        return None
    chosen: Dict[int, bytes] = {}
    used: set = set()
    steps = [0]

    def search(k: int) -> bool:
        if k == len(todo):
            return True
        steps[0] += 1
        if steps[0] > _SEARCH_LIMIT:
            return False
        i = todo[k]
        for node in order:
            if node not in used and scheduling.fits(free[node], bundles[i]):
                used.add(node)
                chosen[i] = node
                if search(k + 1):
                    return True
                used.discard(node)
                del chosen[i]
        return False

    return dict(chosen) if search(0) else None


def _greedy(bundles, todo, free, order, placed, *, spread: bool) -> Optional[Dict[int, bytes]]:
    """Biggest bundles first; SPREAD picks the node with fewest of the group's bundles,
    PACK the node with most (ties: the most free CPU, then the node ID)."""
    count: Dict[bytes, int] = {}
    for node in placed.values():
        count[node] = count.get(node, 0) + 1
    chosen: Dict[int, bytes] = {}
    for i in sorted(todo, key=lambda i: -sum(bundles[i].values())):
        fitting = [n for n in order if scheduling.fits(free[n], bundles[i])]
        if not fitting:
            return None
        sign = 1 if spread else -1
        node = min(fitting, key=lambda n: (sign * count.get(n, 0),
                                           -free[n].get("CPU", 0), n))
        scheduling.acquire(free[node], bundles[i])
        count[node] = count.get(node, 0) + 1
        chosen[i] = node
    return chosen
