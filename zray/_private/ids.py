"""IDs of tasks and objects: fixed-size bytes, made without a round trip.

A task's ID is a random per-process prefix and a counter; the ID of its
``index``-th result is the task's ID and the index, so a caller knows its
result refs before the task is sent.  This module imports nothing from zray.
"""

from __future__ import annotations

import itertools
import os

ID_SIZE = 16
OBJECT_ID_SIZE = ID_SIZE + 4

_id_prefix = os.urandom(ID_SIZE - 8)
_id_counter = itertools.count(1)


def _reset_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(ID_SIZE - 8)
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_reset_ids)


def new_id() -> bytes:
    """A unique ID: a random per-process prefix and a counter (urandom per ID is slow)."""
    return _id_prefix + next(_id_counter).to_bytes(8, "big")


def object_id(task_id: bytes, index: int) -> bytes:
    """The ID of a task's ``index``-th return: known before the task is sent."""
    return task_id + index.to_bytes(4, "big")


def task_of(oid: bytes) -> bytes:
    return oid[:ID_SIZE]


def index_of(oid: bytes) -> int:
    """Which of its task's results an object is (0 for a put)."""
    return int.from_bytes(oid[ID_SIZE:], "big")
