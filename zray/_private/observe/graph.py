"""A job's computation graph, from its task records (Ray's ``visualize_computation_graph``).

Tasks are boxes and objects ovals.  A dashed edge runs from each task to
every task it submitted (from a box named ``op-root`` for tasks the driver
submitted), a solid edge from a task to each object it returns, and a solid
edge from an object to each task that takes it as an argument::

    op-root ┄┄▶ [zeros] ──▶ (obj a) ──▶ [dot] ──▶ (obj c)
       ┆                                  ▲
       └┄┄┄┄▶ [zeros] ──▶ (obj b) ────────┘

:func:`graph_model` builds a plain-dict model (the dashboard draws it),
:func:`to_dot` writes it as Graphviz DOT, and :func:`render` runs Graphviz's
``dot``, if it is installed, to draw it.  Nothing here queries the cluster.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any, Dict, Iterable, List, Optional, Tuple

from zray._private.ids import ID_SIZE
from zray._private.observe.events import FAILED, FINISHED, RUNNING
from zray._private.observe.tables import format_size

ROOT = "op-root"

# zray IDs start with a per-process random prefix (see ids.py), so their first
# hex digits are the same for everything one driver made; the counter's low
# bytes, just before an object's return index, are what tell two apart.
_SHORT = slice(2 * ID_SIZE - 8, 2 * ID_SIZE)

_FILL = {FINISHED: "palegreen", RUNNING: "lightyellow", FAILED: "lightcoral"}
_FORMAT = re.compile(r"[a-z0-9_:]+")


def graph_model(records: Iterable[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Nodes (``t_<task hex>``, ``o_<object hex>``, ``op-root``) and edges of the records' graph.

    A task whose submission was never recorded has no parent edge, rather
    than a wrong one from ``op-root``; a parent missing from ``records`` is
    drawn as a box labeled with its short ID.
    """
    records = list(records)
    nodes: Dict[str, Dict[str, Any]] = {}
    edges: Dict[Tuple[str, str], str] = {}      # keyed to draw each edge once
    sizes: Dict[str, Optional[int]] = {}        # object hex -> size, when known
    for record in records:
        task = f"t_{record['task_id']}"
        nodes[task] = {"id": task, "label": record.get("name") or _short_task(record["task_id"]),
                       "shape": "box", "state": record.get("state")}
    for record in records:
        task = f"t_{record['task_id']}"
        parent = record.get("parent_task_id")
        if parent is not None:
            _add_node(nodes, f"t_{parent}", _short_task(parent), "box")
            edges[(f"t_{parent}", task)] = "dashed"
        elif record.get("submitted_at") is not None:
            _add_node(nodes, ROOT, ROOT, "box")
            edges[(ROOT, task)] = "dashed"
        for ret in record.get("returns") or ():
            _note_object(nodes, sizes, ret)
            edges[(task, f"o_{ret['object_id']}")] = "solid"
        for arg in record.get("args") or ():
            _note_object(nodes, sizes, arg)
            edges.setdefault((f"o_{arg['object_id']}", task), "solid")
    for oid, size in sizes.items():
        nodes[f"o_{oid}"]["label"] = _object_label(oid, size)
    return {
        "nodes": list(nodes.values()),
        "edges": [{"from": src, "to": dst, "style": style} for (src, dst), style in edges.items()],
    }


def _add_node(nodes: Dict[str, Dict[str, Any]], node_id: str, label: str, shape: str) -> None:
    if node_id not in nodes:
        nodes[node_id] = {"id": node_id, "label": label, "shape": shape, "state": None}


def _note_object(nodes: Dict[str, Dict[str, Any]], sizes: Dict[str, Optional[int]],
                 ref: Dict[str, Any]) -> None:
    oid = ref["object_id"]
    _add_node(nodes, f"o_{oid}", "", "ellipse")
    if sizes.get(oid) is None:
        sizes[oid] = ref.get("size")


def _short_task(task_hex: str) -> str:
    return task_hex[_SHORT] if len(task_hex) == 2 * ID_SIZE else task_hex[:8]


def _object_label(object_hex: str, size: Optional[int]) -> str:
    if len(object_hex) > 2 * ID_SIZE:
        index = int(object_hex[2 * ID_SIZE:], 16)
        short = object_hex[_SHORT] + (f"#{index}" if index else "")
    else:
        short = object_hex[:8]
    return f"obj {short}" if size is None else f"obj {short} ({format_size(size)})"


def to_dot(model: Dict[str, List[Dict[str, Any]]], name: str = "computation_graph") -> str:
    """Graphviz DOT text for a :func:`graph_model`; tasks are filled by state."""
    lines = [f"digraph {_quote(name)} {{", '  node [fontname="Helvetica"];']
    for node in model["nodes"]:
        attrs = [f"label={_quote(node['label'])}", f"shape={node['shape']}"]
        fill = _FILL.get(node.get("state"))
        if fill is not None:
            attrs.append(f'style=filled, fillcolor="{fill}"')
        lines.append(f"  {_quote(node['id'])} [{', '.join(attrs)}];")
    for edge in model["edges"]:
        lines.append(f"  {_quote(edge['from'])} -> {_quote(edge['to'])} [style={edge['style']}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(text: Any) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as ``\\n``."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{escaped}"'


def render(dot_text: str, filename: str, fmt: str = "svg") -> Optional[str]:
    """Draw ``dot_text`` with Graphviz into ``filename`` (``.<fmt>`` added if missing).

    Returns the path written, or None when the ``dot`` binary is not on PATH.
    Raises RuntimeError with Graphviz's message if it fails.
    """
    if not _FORMAT.fullmatch(fmt):
        raise ValueError(f"not a Graphviz output format: {fmt!r}")
    dot = shutil.which("dot")
    if dot is None:
        return None
    path = filename if filename.endswith(f".{fmt}") else f"{filename}.{fmt}"
    done = subprocess.run([dot, f"-T{fmt}", "-o", path], input=dot_text.encode(),
                          capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"Graphviz dot failed: {done.stderr.decode(errors='replace').strip()}")
    return path
