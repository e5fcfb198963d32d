"""Generator tasks, in the worker: each yielded value becomes an object at once.

::

    fn() ──▶ generator ──▶ item 1 ──▶ YIELDED ──▶ agent: object (task, 1), held for the
                      ├──▶ item 2 ──▶ YIELDED      caller and pushed to it (or to the
                      │    ...                      origin node of a forwarded task)
                      └──▶ end ──▶ the task's result 0: how many items there are

With ``num_returns="streaming"`` the items are the task's results 1, 2, ...
(:func:`zray._private.ids.object_id`), sent one by one as the generator
yields them, so the caller's :class:`zray.ObjectRefGenerator` hands out each
ref as soon as it exists.  An exception inside the generator becomes one more
item, an error, after which the stream ends; result 0 still counts it.  With
``num_returns="dynamic"`` the items are plain puts, and result 0 is a
:class:`zray.DynamicObjectRefGenerator` holding their refs, made when the
generator is exhausted.

Owns: turning a generator's values into objects.  Must not: decide what the
caller sees (the generator classes in ``zray.object_ref`` do).
"""

from __future__ import annotations

import inspect
from typing import Any, List

from zray._private.ids import object_id
from zray._private.protocol import ObjectKind


def drain(worker: Any, spec: dict, value: Any) -> Any:
    """The task's result 0 for a generator task whose function returned ``value``."""
    if inspect.isasyncgen(value):
        return worker.run_coroutine(drain_async(worker, spec, value))
    _check(spec, value, inspect.isgenerator(value))
    if spec["generator"] == "dynamic":
        return _dynamic([worker.client.put(item) for item in value])
    sent = 0
    try:
        for item in value:
            _send_item(worker, spec, sent + 1, item)
            sent += 1
    except Exception as exc:
        sent += 1
        _send_error(worker, spec, sent, exc)
    return sent


async def drain_async(worker: Any, spec: dict, value: Any) -> Any:
    """:func:`drain` on an event loop (an async actor's, or a task's own)."""
    if not inspect.isasyncgen(value):
        return drain(worker, spec, value)
    if spec["generator"] == "dynamic":
        return _dynamic([worker.client.put(item) async for item in value])
    sent = 0
    try:
        async for item in value:
            _send_item(worker, spec, sent + 1, item)
            sent += 1
    except Exception as exc:
        sent += 1
        _send_error(worker, spec, sent, exc)
    return sent


def _check(spec: dict, value: Any, is_generator: bool) -> None:
    if not is_generator:
        raise TypeError(
            f"task {spec.get('name', 'task')} has num_returns={spec['generator']!r}, so it "
            f"must be a generator (use yield), but it returned a {type(value).__name__}")


def _dynamic(refs: List[Any]) -> Any:
    from zray.object_ref import DynamicObjectRefGenerator

    return DynamicObjectRefGenerator(refs)


def _send_item(worker: Any, spec: dict, index: int, item: Any) -> None:
    """Store one yielded value as result ``index`` and tell the agent (raises if
    it cannot be stored: then nothing was sent for it)."""
    frames: List[Any] = []
    oid = object_id(spec["task_id"], index)
    desc = worker.store_result(oid, item, frames, spec.get("name", "task"))
    worker.client.yielded(_item(spec, {"task_id": spec["task_id"], "results": [desc]}), frames)


def _send_error(worker: Any, spec: dict, index: int, exc: BaseException) -> None:
    text, data = worker.failure(spec, spec.get("name", "task"), exc)
    desc = {"object_id": object_id(spec["task_id"], index), "kind": ObjectKind.ERROR,
            "layout": [], "frame": 0}
    worker.client.yielded(_item(spec, {"task_id": spec["task_id"], "results": [desc],
                                       "error": text}), [data])


def _item(spec: dict, body: dict) -> dict:
    if "reply_to" in spec:  # a direct call: its SUBMIT may reach the agent after this
        body["direct"] = True
    return body
