"""The agent's side of the direct path: actor calls callers send straight to the worker.

::

    a call of C's to actor A is done, and no call to A is queued or running
        ──▶ ACTOR_DIRECT to C: A's worker, and how many calls we had from C
    SUBMIT with ``direct`` ──▶ admit: running on that worker already (no EXECUTE)
    TASK_DONE with ``direct`` before its SUBMIT ──▶ kept until the SUBMIT comes
    A's worker gone ──▶ the offer withdrawn from every caller that took it

The agent stays the authority: every direct call is SUBMITted here too, so
its refs, retries, cancellation, events and failures are handled as for any
call; only the EXECUTE and the result's way back skip the agent.

Owns: per actor, how many calls each caller made through the agent and who
calls it directly; the TASK_DONEs that came before their SUBMIT.  Must not:
run or finish tasks itself; it calls the actor table's ``call_done``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, List, Tuple

from zray._private import protocol
from zray._private.agent.tasks import RUNNING
from zray._private.protocol import ObjectKind, Op

logger = logging.getLogger("zray.node")

#: A TASK_DONE kept for its SUBMIT this long is dropped (its caller's SUBMIT
#: left before the call did, so this does not happen while the caller lives).
EARLY_TTL = 60.0
_ANSWERED = (ObjectKind.INLINE, ObjectKind.ERROR)


class DirectPath:
    def __init__(self, wire: Any, objects: Any, agent_address: str) -> None:
        self.wire = wire
        self.objects = objects
        self.enabled = bool(protocol.direct_endpoint(agent_address, b"\0")) and \
            os.environ.get("ZRAY_DIRECT_CALLS", "1") != "0"   # (see client/direct.py)
        # task ID -> (worker, TASK_DONE, frames, when, refs held for it)
        self.early: Dict[bytes, Tuple[Any, dict, Any, float, List[bytes]]] = {}
        self.due: List[tuple] = []   # early ones whose SUBMIT has come
        self.call_done: Callable[[Any, dict, Any], None] = lambda worker, body, raw: None
        self.yielded: Callable[[bytes, dict, Any], None] = lambda ident, body, raw: None
        self.items: Dict[bytes, List[tuple]] = {}   # task ID -> YIELDEDs before the SUBMIT

    def counted(self, actor: Any, task: Any) -> None:
        """A call that came through the agent (what an offer's ``seen`` counts)."""
        callers = actor.callers
        callers[task.owner] = callers.get(task.owner, 0) + 1

    def admit(self, actor: Any, task: Any, alive: bool) -> bool:
        """A direct call: True if it is running on the actor's worker (the one it
        was sent to); False if that worker is gone (it may have run there)."""
        worker = actor.worker
        if not alive or worker is None or worker.wid != task.spec["direct"]:
            return False
        task.state = RUNNING
        task.worker = worker
        actor.inflight[task.tid] = task
        for ident, body, raw, _, held in self.items.pop(task.tid, ()):
            self.yielded(ident, body, raw)  # now: items read later in this pass follow them
            for inner in held:
                self.objects.decref(inner)
        self.take_early(task.tid)
        return True

    def take_early(self, tid: bytes) -> None:
        """The SUBMIT of a call whose TASK_DONE came first is here: finish it
        at the end of this loop pass."""
        early = self.early.pop(tid, None)
        if early is not None:
            self.due.append((self.call_done, *early[:3], early[4]))

    @staticmethod
    def answered(objects: Any, task: Any, body: dict) -> None:
        """A direct call's TASK_DONE: its caller has the inline results (and errors)
        from the worker, so they are not pushed to it again (see client/direct.py)."""
        for result in body["results"]:
            if result["kind"] in _ANSWERED and not result.get("contained"):
                objects.answered_already(result["object_id"], task.owner)

    def early_done(self, worker: Any, body: dict, raw: Any) -> None:
        """A direct call's TASK_DONE came before its SUBMIT (another socket).  The
        refs inside its results are held meanwhile: the worker lets go of its own
        right after, in messages read before that SUBMIT."""
        self.early[body["task_id"]] = (worker, body, raw, time.monotonic(), self.hold(body))

    def early_yield(self, ident: bytes, body: dict, raw: Any) -> None:
        """A direct generator call's item came before its SUBMIT: kept the same way."""
        self.items.setdefault(body["task_id"], []).append(
            (ident, body, raw, time.monotonic(), self.hold(body)))

    def hold(self, body: dict) -> List[bytes]:
        return [inner for result in body["results"] for inner in result.get("contained", ())
                if self.objects.incref(inner)]

    def run_due(self) -> None:
        """Finish the calls whose TASK_DONE had come first; drop stale ones."""
        if self.due:
            due, self.due = self.due, []
            for handle, sender, body, raw, held in due:
                handle(sender, body, raw)
                for inner in held:
                    self.objects.decref(inner)
        if self.early or self.items:
            now = time.monotonic()
            stale = [(tid, [entry]) for tid, entry in self.early.items()
                     if now - entry[3] > EARLY_TTL]
            stale += [(tid, entries) for tid, entries in self.items.items()
                      if now - entries[0][3] > EARLY_TTL]
            for tid, entries in stale:
                self.early.pop(tid, None)
                self.items.pop(tid, None)
                for entry in entries:
                    for inner in entry[4]:
                        self.objects.decref(inner)
                logger.warning("dropped the results of direct call %s: its SUBMIT "
                               "never came", tid.hex()[:8])

    def offer(self, actor: Any, task: Any) -> None:
        """After a call to a live actor: if it has nothing queued or running, its
        caller may call it directly from now on."""
        owner = task.owner
        seen = actor.callers.get(owner, 0)
        if not self.enabled or task.origin is not None or actor.direct.get(owner) == seen or \
                actor.queue or actor.inflight or actor.worker is None or actor.exiting:
            return  # (offered at this count already: taken, or a call is on its way)
        actor.direct[owner] = seen
        self.wire.send(owner, Op.ACTOR_DIRECT, {"actor_id": actor.aid,
                                                 "worker_id": actor.worker.wid, "seen": seen})

    def withdraw(self, actor: Any) -> None:
        """The actor's worker is gone: its direct callers go through the agent again."""
        callers, actor.direct = actor.direct, {}
        for owner in callers:
            self.wire.send(owner, Op.ACTOR_DIRECT, {"actor_id": actor.aid, "worker_id": b"",
                                                     "seen": 0})

