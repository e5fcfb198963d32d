"""Utilities built on zray's public API, under Ray's names.

    from zray.util import ActorPool, as_completed, list_named_actors
    from zray.util.queue import Queue, Empty, Full
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

Modules load on first use: ``import zray.util`` costs little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Union

from zray._private.lazy import lazy_getattr
# Bound here, after the submodule: ``zray.util.placement_group`` is the function, as in Ray.
from zray.util.placement_group import (  # noqa: F401
    PlacementGroup, get_current_placement_group, get_placement_group, placement_group,
    placement_group_table, remove_placement_group,
)

if TYPE_CHECKING:
    from zray.util.actor_pool import ActorPool
    from zray.util.check_serialize import inspect_serializability
    from zray.util.helpers import as_completed, map_unordered
    from zray.util.serialization import deregister_serializer, register_serializer

_LAZY = {
    "ActorPool": "zray.util.actor_pool",
    "as_completed": "zray.util.helpers", "map_unordered": "zray.util.helpers",
    "inspect_serializability": "zray.util.check_serialize",
    "register_serializer": "zray.util.serialization",
    "deregister_serializer": "zray.util.serialization",
}
_SUBMODULES = ("actor_pool", "queue", "scheduling_strategies", "serialization", "helpers",
               "check_serialize", "state", "dask", "futures", "multiprocessing", "joblib")


__getattr__ = lazy_getattr(__name__, _LAZY, _SUBMODULES)


def list_named_actors(all_namespaces: bool = False) -> List[Union[str, Dict[str, str]]]:
    """The named actors alive in this job's namespace, as names; with
    ``all_namespaces``, those of every namespace, as ``{"name", "namespace"}``."""
    from zray._private import state
    from zray.runtime_context import get_runtime_context

    namespace = get_runtime_context().namespace  # starts zray in a driver if needed
    reply = state.client.query("named_actors", namespace=namespace,
                               all_namespaces=bool(all_namespaces))
    actors = reply.get("actors", [])
    if all_namespaces:
        return [{"name": a["name"], "namespace": a["namespace"]} for a in actors]
    return [a["name"] for a in actors if a.get("namespace", namespace) == namespace]


def get_node_ip_address() -> str:
    """This node's IP address (as its agent reports it, once zray is started)."""
    from zray._private import state

    client = state.client
    if client is not None and client.welcome.get("ip"):
        return client.welcome["ip"]
    from zray._private.services import ip_towards

    return ip_towards("8.8.8.8")  # the interface of the default route; nothing is sent


__all__ = ["ActorPool", "as_completed", "map_unordered", "list_named_actors",
           "inspect_serializability", "register_serializer", "deregister_serializer",
           "get_node_ip_address", "PlacementGroup", "placement_group", "remove_placement_group",
           "placement_group_table", "get_placement_group", "get_current_placement_group"]
