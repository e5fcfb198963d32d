"""A cluster started through the CLI on this machine (`zray head`, `zray worker`),
for integration tests that need several nodes: run `zray` commands in its
environment, read its nodes' records, ask its status."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmpdir: str) -> None:
        self.env = dict(os.environ, ZRAY_TMPDIR=tmpdir,
                        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        self.env.pop("ZRAY_TOKEN", None)
        self.tmpdir = tmpdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def zray(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "zray.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"zray {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def records(self) -> list:
        root = os.path.join(self.tmpdir, "zray_sessions")
        out = []
        for name in os.listdir(root):
            path = os.path.join(root, name, "cluster.json")
            if os.path.exists(path):
                with open(path) as f:
                    out.append(dict(json.load(f), session_dir=os.path.join(root, name)))
        return out

    def record_of(self, node_id: str) -> dict:
        return next(r for r in self.records() if r["node_id"] == node_id)

    def status(self) -> dict:
        return json.loads(self.zray("status", "--json").stdout)


@contextlib.contextmanager
def running(prefix: str, head: List[str], workers: List[List[str]], cpus: float):
    """A cluster from `zray head HEAD...` and one `zray worker WORKER...` per entry, with
    this process connected as its driver once the head counts ``cpus`` CPUs; stopped
    (and its files removed) at exit."""
    import zray

    tmpdir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: it holds socket paths
    c = Cluster(tmpdir)
    old = os.environ.get("ZRAY_TMPDIR")
    os.environ["ZRAY_TMPDIR"] = tmpdir  # this driver finds the nodes' records here
    try:
        c.head_output = c.zray("head", "--port", str(c.port), *head).stdout
        c.token = c.head_output.split("token: ")[1].split()[0]
        for args in workers:
            c.zray("worker", "--address", c.address, "--token", c.token, *args)
        zray.init(address=c.address)
        deadline = time.monotonic() + 10
        while zray.cluster_resources().get("CPU") != cpus and time.monotonic() < deadline:
            time.sleep(0.05)  # the driver's node hears of the last join from the head
        yield c
    finally:
        zray.shutdown()
        c.zray("stop", check=False)
        shutil.rmtree(tmpdir, ignore_errors=True)
        if old is None:
            os.environ.pop("ZRAY_TMPDIR", None)
        else:
            os.environ["ZRAY_TMPDIR"] = old
