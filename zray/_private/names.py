"""Named actors of a cluster: who holds each (namespace, name).

The head keeps one ``ActorNames`` for the whole cluster, so a name claimed by
a driver on one node is found by ``get_actor`` on any other.  A name is
claimed before its actor's creation task is submitted and released when the
actor dies (its node says so) or when its node dies.  Pure logic: no
sockets, unit-tested alone.

Owns: the name table.  Must not: know where actors run (the head's actor
table does) or anything else about them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple


def anonymous_namespace(job_id: bytes) -> str:
    """The namespace of a job that did not name one (as Ray: one per job)."""
    return "anonymous-" + job_id.hex()


class NameTaken(ValueError):
    pass


#: The HEAD_QUERY questions :meth:`ActorNames.answer` answers.
QUERIES = ("claim_name", "release_name", "actor", "named_actors")


class ActorNames:
    def __init__(self) -> None:
        self.entries: Dict[Tuple[str, str], dict] = {}

    def claim(self, namespace: str, name: str, entry: dict,
              get_if_exists: bool = False) -> Tuple[dict, bool]:
        """``(entry, existing)``: the name is now ``entry``'s, or (with
        ``get_if_exists``) the entry already holding it.  Raises NameTaken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"an actor's name must be a non-empty string, got {name!r}")
        key = (namespace, name)
        held = self.entries.get(key)
        if held is not None and held["actor_id"] != entry.get("actor_id"):
            if get_if_exists:
                return held, True
            raise NameTaken(f"an actor named {name!r} already exists in namespace "
                            f"{namespace!r}; pick another name or use "
                            f"get_actor({name!r}, namespace={namespace!r})")
        entry = dict(entry, namespace=namespace, name=name)
        self.entries[key] = entry
        return entry, False

    def release(self, namespace: str, name: str, actor_id: bytes) -> None:
        """The actor died: its name is free (unless another actor holds it now)."""
        held = self.entries.get((namespace, name))
        if held is not None and held["actor_id"] == actor_id:
            del self.entries[(namespace, name)]

    def lookup(self, namespace: str, name: str) -> dict:
        entry = self.entries.get((namespace, name))
        if entry is None:
            raise ValueError(f"no live actor is named {name!r} in namespace {namespace!r}")
        return entry

    def listing(self, namespace: Optional[str]) -> List[dict]:
        """``[{namespace, name}]`` of one namespace, or of all with None."""
        return [{"namespace": ns, "name": name} for (ns, name) in sorted(self.entries)
                if namespace is None or ns == namespace]

    def drop_node(self, node_id: bytes, actors_there: Set[bytes] = frozenset()) -> List[str]:
        """A node died: the names its actors held go (those it claimed and stayed
        there, and ``actors_there``, placed on it from elsewhere).  Returns them."""
        gone = [key for key, entry in self.entries.items()
                if entry.get("node_id") == node_id or entry["actor_id"] in actors_there]
        for key in gone:
            del self.entries[key]
        return [name for _, name in gone]

    def answer(self, what: str, body: dict) -> Optional[dict]:
        """A HEAD_QUERY about names (``QUERIES``) answered: the reply, or None for a
        release (nothing to answer)."""
        reply: dict = {"req": body.get("req", 0)}
        namespace = body.get("namespace", "")
        try:
            if what == "claim_name":
                entry = {"actor_id": body["actor_id"], "anchor": body["anchor"],
                         "meta": body.get("meta", {}), "node_id": body.get("node_id", b"")}
                reply["entry"], reply["existing"] = self.claim(
                    namespace, body["name"], entry, bool(body.get("get_if_exists")))
            elif what == "release_name":
                self.release(namespace, body["name"], body["actor_id"])
                return None
            elif what == "actor":
                reply["entry"] = self.lookup(namespace, body["name"])
            else:
                reply["actors"] = self.listing(
                    None if body.get("all_namespaces") else namespace)
        except ValueError as exc:
            reply["error"] = str(exc)
        return reply
