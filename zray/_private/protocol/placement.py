"""The records of placement groups' messages (ops 90-99).

::

    client ──PG_REQUEST──▶ node agent ──PG_REQUEST──▶ head      create, remove, table,
    client ◀─QUERY_REPLY── node agent ◀──PG_REPLY──── head      get (by name), wait
    head ──BUNDLES_PREPARE──▶ agent ──BUNDLES_PREPARED──▶ head  take a group's bundles out
    head ──BUNDLES_COMMIT───▶ agent                             of the free pool, then make
    head ──BUNDLES_RELEASE──▶ agent                             them resources, or give back

The head reserves one group at a time: PREPARE on every chosen node, then
COMMIT on all of them, or RELEASE on those that prepared (see head_pgs).
"""

from __future__ import annotations

from typing import Dict, List, TypedDict


class PgRequest(TypedDict, total=False):
    """A question or order about placement groups (client -> agent -> head)."""
    req: int
    action: str                     # create, remove, table, get, wait
    pg_id: bytes
    name: str
    strategy: str                   # PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    bundles: List[Dict[str, float]]
    detached: bool
    job_id: bytes
    timeout: float                  # wait: seconds (negative: the head's default)


class PgRow(TypedDict, total=False):
    """One group as placement_group_table shows it (bundle indexes as list positions)."""
    pg_id: bytes
    name: str
    strategy: str
    group_state: str                # PENDING, CREATED, REMOVED, RESCHEDULING
    bundles: List[Dict[str, float]]
    bundle_nodes: List[bytes]       # b"" for a bundle not placed
    detached: bool
    job_id: bytes


class PgReply(TypedDict, total=False):
    req: int
    error: str
    groups: List[PgRow]
    ready: bool                     # wait: whether the group is reserved


class BundleSpec(TypedDict):
    index: int
    resources: Dict[str, float]


class BundlesPrepare(TypedDict):
    """Take these bundles out of your free resources if they all fit (head -> agent)."""
    pg_id: bytes
    attempt: int
    bundles: List[BundleSpec]


class BundlesPrepared(TypedDict):
    """Whether a BUNDLES_PREPARE was done (agent -> head)."""
    pg_id: bytes
    attempt: int
    node_id: bytes
    fits: bool


class BundlesCommit(TypedDict):
    """The prepared bundles become the group's resources on this node (head -> agent)."""
    pg_id: bytes
    indexes: List[int]


class BundlesRelease(TypedDict):
    """Give these bundles back; ``removed``: the group is gone, end its work here."""
    pg_id: bytes
    indexes: List[int]
    removed: bool


__all__ = ["PgRequest", "PgRow", "PgReply", "BundleSpec", "BundlesPrepare",
           "BundlesPrepared", "BundlesCommit", "BundlesRelease"]
