"""Where each node of a computation graph sits: a small layered layout.

Layers are columns (data flows left to right), each node's layer is the
longest path to it from a node without inputs, and a few barycenter sweeps
order each column so edges cross less.  The browser only turns
``(layer, order)`` into pixels.  Pure: no I/O, no zray imports.
"""

from __future__ import annotations

from collections import deque
from typing import Dict, List, Sequence, Tuple

SWEEPS = 4


def _layers(ids: Sequence[str], preds: Dict[str, List[str]],
            succs: Dict[str, List[str]]) -> Dict[str, int]:
    """Longest-path layering in topological order; a cycle (which a task
    graph should not have, but a source may send) is broken at the first
    node of it in input order, so every node still gets a layer."""
    waiting = {i: len(preds[i]) for i in ids}
    ready = deque(i for i in ids if waiting[i] == 0)
    layer: Dict[str, int] = {}
    remaining = list(ids)
    next_unplaced = 0
    while len(layer) < len(ids):
        if not ready:
            while remaining[next_unplaced] in layer:
                next_unplaced += 1
            ready.append(remaining[next_unplaced])
        node = ready.popleft()
        if node in layer:
            continue
        layer[node] = max((layer[p] + 1 for p in preds[node] if p in layer), default=0)
        for s in succs[node]:
            waiting[s] -= 1
            if waiting[s] == 0 and s not in layer:
                ready.append(s)
    return layer


def _sweep(columns: List[List[str]], neighbours: Dict[str, List[str]],
           position: Dict[str, float], order: range) -> None:
    for col in order:
        def barycenter(node: str) -> float:
            placed = [position[n] for n in neighbours[node] if n in position]
            return sum(placed) / len(placed) if placed else position[node]
        columns[col].sort(key=barycenter)
        for i, node in enumerate(columns[col]):
            position[node] = float(i)


def layered_layout(ids: Sequence[str],
                   edges: Sequence[Tuple[str, str]]) -> Dict[str, Tuple[int, int]]:
    """``{id: (layer, order)}`` for every id; edges naming unknown ids and
    self-loops are ignored."""
    ids = list(dict.fromkeys(ids))  # a repeated id would never let _layers finish
    known = set(ids)
    preds: Dict[str, List[str]] = {i: [] for i in ids}
    succs: Dict[str, List[str]] = {i: [] for i in ids}
    for a, b in edges:
        if a in known and b in known and a != b:
            preds[b].append(a)
            succs[a].append(b)
    layer = _layers(ids, preds, succs)
    depth = max(layer.values(), default=-1) + 1
    columns: List[List[str]] = [[] for _ in range(depth)]
    for i in ids:
        columns[layer[i]].append(i)
    position = {node: float(i) for col in columns for i, node in enumerate(col)}
    for sweep in range(SWEEPS):
        if sweep % 2 == 0:
            _sweep(columns, preds, position, range(1, depth))
        else:
            _sweep(columns, succs, position, range(depth - 2, -1, -1))
    return {node: (col, i) for col, nodes in enumerate(columns) for i, node in enumerate(nodes)}
