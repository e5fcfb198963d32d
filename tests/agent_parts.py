"""Building a node agent's parts for unit tests: no sockets, no processes.

The agent's constructor does no I/O, so a test builds a real :class:`Agent`
and gives it an in-memory arena, a spill directory and a template whose
pipes it can read and write.  Messages the parts send stay in
``agent.wire.sent`` (to clients) and ``agent.wire.to_head``.
"""

from __future__ import annotations

import io
import os
from typing import Any, List, Optional

from zray._private import ids, protocol
from zray._private.agent.node import Agent
from zray._private.object_store import SpillStore
from zray._private.protocol import ObjectKind, Op

NODE = b"N" * 16
DRIVER = b"D" * 16


class MemoryArena:
    """An arena in plain memory: ``view(offset, n)`` like the shared one."""

    def __init__(self, size: int) -> None:
        self.name = "zray_test_arena"
        self.size = size
        self.buf = bytearray(size)

    def view(self, offset: int, n: int) -> memoryview:
        return memoryview(self.buf)[offset:offset + n]

    def close(self) -> None:
        pass

    def unlink(self) -> None:
        pass


class PipeTemplate:
    """The worker template's two pipes, without a template: ``spawn`` lines are
    collected, and a test writes the template's reports with ``report``."""

    def __init__(self) -> None:
        self.stdin = io.BytesIO()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.stdout = os.fdopen(self.read_fd, "rb", buffering=0)

    def spawned_ids(self) -> List[bytes]:
        return [bytes.fromhex(line.split()[1])
                for line in self.stdin.getvalue().decode().splitlines()]

    def report(self, line: str) -> None:
        os.write(self.write_fd, line.encode() + b"\n")

    def close(self) -> None:
        self.stdout.close()
        os.close(self.write_fd)


def make_agent(tmp_path: Any, cpus: float = 2, store: int = 1 << 20,
               resources: Optional[dict] = None, token: Optional[str] = None,
               direct: bool = False) -> Agent:
    """An agent with its parts; with ``token``, a node of a TCP cluster (it has a
    ClusterLink, whose messages to the head stay in ``agent.wire.to_head``).
    Unless ``direct``, it lends no worker and offers no direct path: tasks
    take the agent's path, which these tests follow message by message."""
    agent = Agent(session_dir=str(tmp_path), node_id=NODE, head_address="ipc:///nowhere",
                  resources={"CPU": cpus, **(resources or {})}, gpu_ids=[],
                  store_bytes=store, parent_pid=None, token=token)
    agent.objects.arena = MemoryArena(store)
    agent.objects.spill = SpillStore(str(tmp_path))
    agent.workers.template = PipeTemplate()
    agent.dispatcher.leases.early.enabled = direct
    agent.actors.direct.enabled = direct
    agent.on_hello(DRIVER, {"kind": "driver", "pid": 1, "job_id": b"job"}, [])
    return agent


def add_worker(agent: Agent, pid: int) -> bytes:
    """A worker that was spawned and said hello; its identity."""
    agent.workers.spawn()
    wid = agent.workers.template.spawned_ids()[-1]
    agent.on_hello(wid, {"kind": "worker", "pid": pid, "job_id": b""}, [])
    return wid


def spec(name: str = "f", deps: List[bytes] = (), **extra: Any) -> dict:
    body = {"deps": list(deps)} if deps else None
    fields = protocol.task_spec(task_id=ids.new_id(), name=name, function_id=b"F" * 16,
                                args=body, **extra)
    fields["job_id"] = b"job"
    return fields


def export(agent: Agent) -> None:
    agent.tasks.on_export(DRIVER, {"function_id": b"F" * 16, "name": "f", "sys_path": []},
                          [b"pickled"])


def submit(agent: Agent, *specs: dict) -> List[bytes]:
    """Submit as the driver; the IDs of each task's first result."""
    agent.on_submit(DRIVER, {"tasks": list(specs)}, [])
    agent.dispatch()
    return [ids.object_id(s["task_id"], 0) for s in specs]


def sent(agent: Agent, op: Op, to: Optional[bytes] = None) -> List[dict]:
    """Bodies of the messages of ``op`` sent so far (batches opened), oldest first."""
    agent.wire.flush_outgoing()
    out = []
    for ident, sent_op, body, raw in agent.wire.sent:
        if sent_op == op and (to is None or ident == to):
            out.extend(item for item, _ in protocol.unpack_batch(body, list(raw)))
    return out


def done(agent: Agent, wid: bytes, task_id: bytes, value: bytes = b"ok",
         error: str = "") -> None:
    """The worker reports the task finished with an inline result."""
    kind = ObjectKind.ERROR if error else ObjectKind.INLINE
    result = {"object_id": ids.object_id(task_id, 0), "kind": kind, "layout": [[0, 2]],
              "frame": 0}
    agent.on_task_done(wid, {"task_id": task_id, "results": [result], "error": error,
                             "run_seconds": 0.0001}, [value])
    agent.dispatch()


def results_for(agent: Agent, ident: bytes = DRIVER) -> dict:
    """object ID -> the last OBJECT descriptor (with its frame bytes) sent to ``ident``."""
    agent.wire.flush_outgoing()
    out = {}
    for who, op, body, raw in agent.wire.sent:
        if op == Op.OBJECT and who == ident:
            for item, frames in protocol.unpack_batch(body, list(raw)):
                out[item["object_id"]] = (item, frames[0] if frames else None)
    return out
