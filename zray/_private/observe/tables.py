"""The state API's pure part: filtering, summarizing and printing rows.

Rows are flat dicts (tasks, actors, objects, nodes, workers, jobs), built
elsewhere; nothing here knows where they came from or how many kinds there
are.  Filters behave as Ray's state API's do: ``(key, predicate, value)`` with
predicate ``"="`` or ``"!="``, values compared as text, states regardless of case.

This module must not fetch rows or print: callers do both.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Tuple

PREDICATES = ("=", "!=")

#: Widest a table cell gets before it is cut short with an ellipsis.
MAX_CELL_WIDTH = 40

_ELLIPSIS = "…"
_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")

Filter = Tuple[str, str, Any]


# ------------------------------------------------------------------- filters


def parse_filter(text: str) -> Filter:
    """``"key=value"`` or ``"key!=value"`` (as typed on the command line) as a filter."""
    for predicate in ("!=", "="):    # "!=" first: it contains "="
        key, found, value = text.partition(predicate)
        if found:
            key, value = key.strip(), value.strip()
            if not key:
                raise ValueError(f"filter {text!r} names no key; write key=value or key!=value")
            return (key, predicate, value)
    raise ValueError(f"filter {text!r} has no predicate; write key=value or key!=value")


def apply_filters(rows: List[Dict[str, Any]], filters: Optional[List[Filter]],
                  valid_keys: Optional[Iterable[str]] = None) -> List[Dict[str, Any]]:
    """The rows that pass every filter.

    A filter's key must be a column: one of ``valid_keys`` if given, else a key
    of some row (so with no rows and no ``valid_keys``, any key passes).
    Raises ValueError for an unknown key or predicate, naming the valid ones.
    """
    if not filters:
        return list(rows)
    keys = set(valid_keys) if valid_keys is not None else {key for row in rows for key in row}
    checks = []
    for flt in filters:
        try:
            key, predicate, value = flt
        except (TypeError, ValueError):
            raise ValueError(f"a filter is (key, predicate, value), got {flt!r}")
        if predicate not in PREDICATES:
            raise ValueError(f"unsupported predicate {predicate!r} in filter on {key!r}; "
                             f"use one of {', '.join(PREDICATES)}")
        if (keys or valid_keys is not None) and key not in keys:
            raise ValueError(f"unknown filter key {key!r}; valid keys: {', '.join(sorted(keys))}")
        checks.append((key, predicate == "=", value))
    return [row for row in rows
            if all(_matches(key, row.get(key), value) == wanted for key, wanted, value in checks)]


def _matches(key: str, actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, str) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return float(wanted) == actual     # "1" and "1.0" both match 1
        except ValueError:
            return False
    actual_text, wanted_text = _as_text(actual), _as_text(wanted)
    # States are upper case in rows but typed any which way; so are booleans.
    if _is_state(key) or isinstance(actual, bool):
        return actual_text.casefold() == wanted_text.casefold()
    return actual_text == wanted_text


def _is_state(key: str) -> bool:
    return key in ("state", "status") or key.endswith(("_state", "_status"))


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def limit_rows(rows: List[Dict[str, Any]], limit: Optional[int]) -> List[Dict[str, Any]]:
    """At most the first ``limit`` rows (all of them for None)."""
    if limit is None:
        return list(rows)
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return list(rows[:limit])


# ----------------------------------------------------------------- summaries


def summarize_tasks(rows: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Task counts per function name and state, with totals (Ray's ``summary tasks``)."""
    summary: Dict[str, Dict[str, Any]] = {}
    totals: Counter = Counter()
    by_type: Counter = Counter()
    for row in rows:
        name = str(row.get("name") or row.get("func_or_class_name") or "<unknown>")
        entry = summary.get(name)
        if entry is None:
            entry = summary[name] = {"func_or_class_name": name, "type": row.get("type"),
                                     "state_counts": {}}
        state = row.get("state") or "UNKNOWN"
        entry["state_counts"][state] = entry["state_counts"].get(state, 0) + 1
        totals[state] += 1
        by_type[row.get("type")] += 1
    return {
        "summary": summary,
        "total_tasks": sum(totals.values()),
        "total_actor_tasks": by_type["ACTOR_TASK"],
        "total_actor_scheduled": by_type["ACTOR_CREATION_TASK"],
        "state_counts": dict(totals),
    }


def summarize_actors(rows: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Actor counts per class name and state, with totals (Ray's ``summary actors``)."""
    summary: Dict[str, Dict[str, Any]] = {}
    totals: Counter = Counter()
    for row in rows:
        name = str(row.get("class_name") or row.get("name") or "<unknown>")
        entry = summary.setdefault(name, {"class_name": name, "state_counts": {}})
        state = row.get("state") or "UNKNOWN"
        entry["state_counts"][state] = entry["state_counts"].get(state, 0) + 1
        totals[state] += 1
    return {"summary": summary, "total_actors": sum(totals.values()),
            "state_counts": dict(totals)}


def summarize_objects(rows: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Object count and bytes, overall, per node and spilled (Ray's ``summary objects``).

    A row's size is ``object_size`` (or ``size``; unknown counts as 0), its node
    ``node_id``, and it is spilled if ``spilled`` is true or its ``state`` is SPILLED.
    """
    total = size_total = spilled = spilled_size = 0
    by_node: Dict[str, Dict[str, int]] = {}
    for row in rows:
        size = row.get("object_size", row.get("size"))
        size = size if isinstance(size, int) and size > 0 else 0
        total += 1
        size_total += size
        node = by_node.setdefault(str(row.get("node_id")), {"count": 0, "size": 0})
        node["count"] += 1
        node["size"] += size
        if row.get("spilled") or str(row.get("state", "")).upper() == "SPILLED":
            spilled += 1
            spilled_size += size
    return {"total_objects": total, "total_size": size_total, "by_node": by_node,
            "spilled": {"count": spilled, "size": spilled_size}}


# ------------------------------------------------------------------ printing


def format_size(n: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 MiB``."""
    sign, n = ("-", -n) if n < 0 else ("", n)
    if n < 1024:
        return f"{sign}{n} B"
    amount, unit = n / 1024, 0
    # Compare rounded, so 1023.99 KiB prints as "1.0 MiB", not "1024.0 KiB".
    while round(amount, 1) >= 1024 and unit < len(_SIZE_UNITS) - 1:
        amount /= 1024
        unit += 1
    return f"{sign}{amount:.1f} {_SIZE_UNITS[unit]}"


def format_table(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None,
                 max_width: int = MAX_CELL_WIDTH) -> str:
    """A plain-text table: an upper-case header row, then one line per row.

    ``columns`` defaults to every key in the rows, in the order first seen.
    Missing and None values print empty; cells wider than ``max_width`` are cut
    short with an ellipsis.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return ""
    lines = [[_cell(column.upper(), max_width) for column in columns]]
    lines += [[_cell(row.get(column), max_width) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)


def _cell(value: Any, max_width: int) -> str:
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.3f}"
    else:
        text = _as_text(value)
    text = " ".join(text.split())       # a newline would break the row
    if len(text) > max_width:
        text = text[:max(max_width - 1, 0)] + _ELLIPSIS
    return text
