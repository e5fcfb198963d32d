"""Jobs ending with their drivers: the node's part, and telling the others.

::

    BYE from a driver, or its process found gone ──▶ end ──▶ its refs go (drop_client)
                                                       ├──▶ ended here: tasks, actors
                                                       └──▶ JOB_ENDED to the head ──▶ every
                                                            other node's ``ended``

Owns: deciding a driver is gone (pid and start time, looked at every
second) and the order of the ending.  Must not: touch tasks, actors or
objects itself (their tables' ``end_job`` and the agent's ``drop_client`` do).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict

from zray._private.protocol import Op

logger = logging.getLogger("zray.node")


class Jobs:
    def __init__(self, tasks: Any, actors: Any, wire: Any, clients: Dict[bytes, Any],
                 drop_client: Callable[[bytes], None], clustered: bool) -> None:
        self.tasks = tasks
        self.actors = actors
        self.wire = wire
        self.clients = clients
        self.drop_client = drop_client
        self.clustered = clustered

    def check_drivers(self) -> None:
        for client in [c for c in self.clients.values() if c.kind == "driver"]:
            if client.gone():
                logger.warning("driver pid %d (job %s) exited without disconnecting: ending "
                               "its job", client.pid, client.job.hex()[:8])
                self.end(client, f"its driver (pid {client.pid}) died")

    def end(self, client: Any, why: str) -> None:
        """A driver is gone: its refs go, and its job's tasks and actors, on every node."""
        self.drop_client(client.ident)
        self.ended({"job_id": client.job, "reason": why})
        # The head hears even on a single node: it releases the job's placement groups.
        self.wire.send_head(Op.JOB_ENDED, {"job_id": client.job, "reason": why})

    def ended(self, body: dict, raw: Any = ()) -> None:
        """End a job's work here (its driver's node says so, through the head)."""
        job, why = body["job_id"], body.get("reason") or "its driver is gone"
        count = self.tasks.end_job(job, why)
        self.actors.end_job(job, why)
        if count:
            logger.info("job %s ended (%s): %d task(s) dropped or cancelled", job.hex()[:8],
                        why, count)
