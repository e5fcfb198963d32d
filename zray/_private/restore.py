"""Starting a cluster's head again (`zray head`, `zray head --restore`), from its record.

A head keeps no state that the nodes cannot give back: when its process
dies, the nodes go on serving their local drivers (they warn them that work
needing another node waits), and their sockets keep reconnecting.  This
starts a new head process in the dead one's session folder, on the same
address, with the same token (from the node record `zray head` wrote on this
machine), so its keys are the same.  Each node's next heartbeat then hears
"unknown" and registers again, with its actors (and their names) and the
objects others know it holds (``protocol.NodeHas``); what a node sent while
the head was down waited in its socket and is delivered.

Plain `zray head` first looks for such a head (:func:`find_restorable`): one
started on this machine whose process is dead while its node's agent runs
on.  It restores the newest, unless told ``--no-restore``; a record it
cannot restore from is named, and a new cluster starts as usual.

Owns: the restart.  Must not: change the nodes (they do their part alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import List, Optional, Tuple

from zray._private import services
from zray._private.startup import dashboard_url_from, read_lines


RECORD_FIELDS = ("address", "token", "procs", "session_dir")


def find_restorable(port: Optional[int] = None) -> Tuple[Optional[dict], List[str]]:
    """The record of the newest head started on this machine whose process died while
    its node's agent runs on (with ``port``: only a head on that port), and why each
    other such record cannot be restored from."""
    found, why_not = None, []
    for record in services.read_records():
        if record.get("kind") != "head":
            continue
        procs = record.get("procs")
        if procs_of(record) and (services._is_ours(procs[0])
                                 or not services._is_ours(procs[-1])):
            continue   # a running head, or an old record whose node is gone too
        problem = unusable(record)
        where = record.get("address") or record["session_dir"]
        if problem is None and port is not None and services.split_address(where)[1] != port:
            problem = f"it listened on another port than {port} (`zray head --restore` " \
                      f"restores it)"
        if problem is not None:
            why_not.append(f"the head at {where}: {problem}")
        elif found is None:
            found = record
    return found, why_not


def procs_of(record: dict) -> bool:
    """Whether the record names the head's process and its node agent's, readably."""
    procs = record.get("procs")
    return isinstance(procs, list) and len(procs) >= 2 and all(
        isinstance(p, dict) and isinstance(p.get("pid"), int) and "created" in p for p in procs)


def unusable(record: dict) -> Optional[str]:
    """Why a head's record cannot be restored from (None: it can be)."""
    missing = [name for name in RECORD_FIELDS if not record.get(name)]
    if missing:
        return f"its record lacks {', '.join(missing)}"
    if not procs_of(record):
        return "its record names its processes in a form this zray does not read"
    try:
        services.split_address(record["address"])
    except services.ClusterError as exc:
        return str(exc)
    if not os.path.isdir(os.path.join(record["session_dir"], "logs")):
        return "its session folder is gone"
    return None


def restore_head(address: Optional[str] = None, timeout: float = 20.0,
                 record: Optional[dict] = None) -> dict:
    """Start again the dead head of the cluster whose head node runs on this machine
    (``record``: that head's, as :func:`find_restorable` found it)."""
    if record is None:
        record = dead_head(address)
    host, port = services.split_address(record["address"])
    bind = record.get("bind") or host
    args = ["zray._private.head", "--bind", f"tcp://{bind}:{port}", "--pub", f"tcp://{bind}:0",
            "--session-dir", record["session_dir"]]
    if record.get("dashboard"):
        args += ["--dashboard", record["dashboard"]]
    ready_r, ready_w = os.pipe()
    log = open(os.path.join(record["session_dir"], "logs", "head.log"), "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", *args, "--ready-fd", str(ready_w)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, pass_fds=(ready_w,),
                                env=dict(os.environ, ZRAY_TOKEN=record["token"]))
    finally:
        log.close()
        os.close(ready_w)
    try:
        told = read_lines(ready_r, "dashboard" if record.get("dashboard") else "bound", timeout)
    finally:
        os.close(ready_r)
    if not any(line.startswith("bound") for line in told):
        proc.kill()
        raise services.ClusterError(f"the head did not start again:\n"
                                    f"{services.log_tail(record['session_dir'])}")
    import psutil

    record["procs"][0] = {"pid": proc.pid, "created": psutil.Process(proc.pid).create_time()}
    if record.get("dashboard"):
        url, error = dashboard_url_from(told)
        record["dashboard_url" if url else "dashboard_error"] = url or error
    path = os.path.join(record["session_dir"], services.RECORD)
    saved = {k: v for k, v in record.items() if k != "session_dir"}
    with open(path + ".tmp", "w") as f:
        json.dump(saved, f)
    os.replace(path + ".tmp", path)
    return record


def dead_head(address: Optional[str]) -> dict:
    """`zray head --restore`: the record of the head to start again, or why there is none."""
    heads = [r for r in services.read_records() if r.get("kind") == "head" and (
        address in (None, "auto") or services._same_endpoint(r.get("address", ""), address))]
    if not heads:
        raise services.ClusterError("no zray head was started on this machine, so there is "
                                    "nothing to restore: start a cluster with `zray head`")
    record = heads[0]
    problem = unusable(record)
    if problem is not None:
        raise services.ClusterError(f"the head at {record.get('address', '?')} cannot be "
                                    f"restored: {problem}")
    procs = record["procs"]
    if services._is_ours(procs[0]):
        raise services.ClusterError(f"the head at {record['address']} is running: nothing "
                                    f"to restore")
    if not services._is_ours(procs[-1]):
        raise services.ClusterError("the head's own node is gone too: stop what is left with "
                                    "`zray stop` and start a new cluster with `zray head`")
    return record
