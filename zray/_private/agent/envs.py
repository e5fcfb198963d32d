"""Workers kept per runtime environment (``TaskSpec.runtime_env``, by its key).

A worker started for an environment runs only that environment's tasks and
actors; the default environment's workers (no key) are the pool's own and
never come here, so the plain-task path is unchanged.  Most environments
(working_dir, py_modules) fork from the template like any worker and set
themselves up at their first task; one with ``pip`` is told its requirements
on the spawn line, so the forked child can build (or find) the environment's
virtualenv and exec its interpreter before it connects.

Idle workers of an environment are retired after ``ZRAY_RUNTIME_ENV_IDLE_SECONDS``
(60 s by default), so a node does not keep one per environment forever.

Owns: the per-environment idle lists, starting counts and idle times.
Must not: send messages or start processes (the pool does).
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Dict, List, Optional

IDLE_SECONDS = float(os.environ.get("ZRAY_RUNTIME_ENV_IDLE_SECONDS", "60"))
CHECK_INTERVAL = 1.0


def spawn_line(wid: bytes, env: Optional[dict]) -> str:
    """What the template is told: a pip environment's requirements ride along (hex JSON)."""
    if env is None or "pip" not in env:
        return f"spawn {wid.hex()}\n"
    pip = {k: v for k, v in env.items() if k.startswith("pip")}
    return f"spawn {wid.hex()} {json.dumps(pip, sort_keys=True).encode().hex()}\n"


class EnvWorkers:
    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self.idle: Dict[str, List[Any]] = {}
        self.starting: Dict[str, int] = collections.Counter()
        self.idle_since: Dict[bytes, float] = {}
        self.next_check = 0.0

    def take(self, key: str, idle_state: Any) -> Optional[Any]:
        """An idle worker of environment ``key``, if there is one."""
        idle = self.idle.get(key)
        while idle:
            worker = idle.pop()
            self.idle_since.pop(worker.wid, None)
            if worker.state is idle_state:
                return worker
        return None

    def to_start(self, key: str, wanted: int, cpus: int) -> int:
        """How many more workers of ``key`` to start for ``wanted`` queued tasks."""
        return max(0, min(wanted, cpus, 8) - self.starting[key])

    def spawned(self, key: str) -> None:
        self.starting[key] += 1

    def not_starting(self, key: str) -> None:
        if self.starting[key] > 1:
            self.starting[key] -= 1
        else:
            self.starting.pop(key, None)

    def make_idle(self, worker: Any) -> None:
        self.idle.setdefault(worker.env, []).append(worker)
        self.idle_since[worker.wid] = time.monotonic()

    def expired(self, now: float, idle_state: Any) -> List[Any]:
        """Idle workers to retire now (checked about once a second)."""
        if now < self.next_check or not self.idle_since:
            return []
        self.next_check = now + CHECK_INTERVAL
        out = []
        for key, idle in list(self.idle.items()):
            keep = []
            for worker in idle:
                if worker.state is not idle_state:
                    self.idle_since.pop(worker.wid, None)
                elif now - self.idle_since.get(worker.wid, now) >= self.idle_seconds:
                    self.idle_since.pop(worker.wid, None)
                    out.append(worker)
                else:
                    keep.append(worker)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        return out

    def count(self) -> int:
        return sum(len(v) for v in self.idle.values())
