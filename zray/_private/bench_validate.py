"""Microbenchmark: what checking a message (``validate.check``) costs on the agent's hot path.

    python -m zray._private.bench_validate

Prints microseconds per message and per entry for the messages the node agent
reads most: SUBMIT batches of 64 task specs (plain, with arguments, actor
calls), TASK_DONE batches, PUT, DECREF and FETCH; and, for comparison, what
decoding the same message costs.  Measures only: no assertion on the figures.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Tuple

from zray._private import ids, protocol, validate
from zray._private.protocol import ObjectKind, Op


def messages() -> List[Tuple[str, int, Op, dict, list]]:
    """``(name, entries, op, body, raw)`` of typical hot-path messages."""
    job, fid = ids.new_id(), ids.new_id()
    oid = ids.object_id(ids.new_id(), 0)
    plain = [protocol.task_spec(task_id=ids.new_id(), job_id=job, name="f", function_id=fid,
                                args={"args": b"x" * 40, "args_layout": [[0, 40]]})
             for _ in range(64)]
    with_deps = [protocol.task_spec(task_id=ids.new_id(), job_id=job, name="g", function_id=fid,
                                    resources={"CPU": 1.0, "GPU": 0.5},
                                    args={"deps": [oid, oid], "contained": [oid],
                                          "args": b"x" * 40, "args_layout": [[0, 40]]})
                 for _ in range(64)]
    calls = [protocol.task_spec(task_id=ids.new_id(), job_id=job, name="A.m", resources={},
                                actor_id=ids.new_id(), method="m", namespace="ns",
                                args={"args": b"x" * 40, "args_layout": [[0, 40]]})
             for _ in range(64)]
    done, frames = protocol.pack_batch([(
        {"task_id": ids.new_id(), "error": "", "run_seconds": 0.001,
         "results": [{"object_id": ids.object_id(ids.new_id(), 0), "kind": ObjectKind.INLINE,
                      "layout": [[0, 8]], "frame": 0}]}, [b"8 bytes!"]) for _ in range(64)])
    puts = [[ids.object_id(ids.new_id(), 0), [[0, 8]], []] for _ in range(64)]
    refs = [ids.object_id(ids.new_id(), 0) for _ in range(64)]
    return [
        ("SUBMIT, 64 plain specs", 64, Op.SUBMIT, {"tasks": plain}, []),
        ("SUBMIT, 64 specs with deps and resources", 64, Op.SUBMIT, {"tasks": with_deps}, []),
        ("SUBMIT, 64 actor calls", 64, Op.SUBMIT, {"tasks": calls}, []),
        ("SUBMIT, 1 spec", 1, Op.SUBMIT, {"tasks": plain[:1]}, []),
        ("TASK_DONE, batch of 64", 64, Op.TASK_DONE, done, frames),
        ("PUT, 64 objects", 64, Op.PUT, {"objects": puts}, [b"8 bytes!"] * 64),
        ("DECREF, 64 IDs", 64, Op.DECREF, {"object_ids": refs}, []),
        ("FETCH, 1 ID", 1, Op.FETCH, {"object_ids": refs[:1]}, []),
    ]


def per_call(fn: Callable[[], Any], seconds: float = 0.2) -> float:
    """Seconds per call of ``fn``, the best of three runs."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        if took > seconds / 10:
            break
        n *= 4
    best = took
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n


def main() -> None:
    print(f"{'message':42} {'check µs':>9} {'per entry':>10} {'decode µs':>10}")
    for name, entries, op, body, raw in messages():
        header, *raw = protocol.encode(op, body, *raw)
        _, body, raw = protocol.decode([header, *raw])  # as the agent gets it
        checked = per_call(lambda op=op, body=body, raw=raw: validate.check(op, body, raw))
        frames = [header, *raw]
        decoded = per_call(lambda frames=frames: protocol.decode(frames))
        checked, decoded = checked * 1e6, decoded * 1e6
        print(f"{name:42} {checked:9.2f} {checked / entries:10.3f} {decoded:10.2f}")


if __name__ == "__main__":
    main()
