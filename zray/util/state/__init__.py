"""Ray's state API: what the cluster runs and holds, as rows.

    from zray.util.state import list_tasks, summarize_tasks
    failed = list_tasks(filters=[("state", "=", "FAILED")])

Works from a driver (through its node) and, with no session, against the
cluster on this machine or at ``address``.  See :mod:`zray.util.state.api`.
"""

from zray.util.state.api import (  # noqa: F401
    StateRow, get_actor, get_job, get_node, get_objects, get_task, get_worker, list_actors,
    list_jobs, list_nodes, list_objects, list_placement_groups, list_tasks, list_workers,
    summarize_actors, summarize_objects, summarize_tasks,
)

__all__ = ["StateRow", "get_actor", "get_job", "get_node", "get_objects", "get_task",
           "get_worker", "list_actors", "list_jobs", "list_nodes", "list_objects",
           "list_placement_groups", "list_tasks",
           "list_workers", "summarize_actors", "summarize_objects", "summarize_tasks"]
