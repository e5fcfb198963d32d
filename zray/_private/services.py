"""Starting and stopping zray's processes.

An embedded session (``zray.init()`` with no address) is a session
directory (mode 0700) holding the sockets and logs, a head process and one
node agent, both children of the driver and both watching it: if the driver
dies they exit on their own.  ``stop`` ends them and removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import psutil

from zray._private import protocol


def session_root() -> str:
    root = os.path.join(os.environ.get("ZRAY_TMPDIR", tempfile.gettempdir()), "zray_sessions")
    os.makedirs(root, mode=0o700, exist_ok=True)
    return root


def detect_gpus() -> List[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(g) for g in visible.split(",") if g.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))))


def default_store_bytes() -> int:
    # 30% of memory, as users of shared-memory stores expect, but capped so a
    # laptop session does not claim gigabytes it will never use (the arena is
    # sparse: untouched pages cost nothing).
    return int(min(psutil.virtual_memory().total * 0.3, 8 * 1024 ** 3))


class LocalSession:
    """The processes of an embedded single-node cluster."""

    def __init__(self, *, num_cpus: float, gpu_ids: List[int], num_gpus: float,
                 resources: Dict[str, float], store_bytes: int) -> None:
        self.session_dir = tempfile.mkdtemp(prefix="zray_session_", dir=session_root())
        os.chmod(self.session_dir, 0o700)
        os.makedirs(os.path.join(self.session_dir, "logs"))
        self.node_id = protocol.new_id()
        self.head_address = f"ipc://{self.session_dir}/zray_head.sock"
        pub_address = f"ipc://{self.session_dir}/zray_pub.sock"
        self.agent_address = f"ipc://{self.session_dir}/zray_agent_{self.node_id.hex()[:8]}.sock"
        total = {"CPU": float(num_cpus), **resources}
        if num_gpus:
            total["GPU"] = float(num_gpus)
        total["memory"] = float(store_bytes)
        self.resources = {k: v for k, v in total.items() if k != "memory"}
        self.procs: List[subprocess.Popen] = []
        parent = str(os.getpid())
        self.head = self._spawn("head", [
            "zray._private.head", "--bind", self.head_address, "--pub", pub_address,
            "--parent-pid", parent])
        self.agent = self._spawn("node", [
            "zray._private.node", "--session-dir", self.session_dir,
            "--node-id", self.node_id.hex(), "--head", self.head_address,
            "--resources", json.dumps(self.resources),
            "--gpu-ids", ",".join(str(g) for g in gpu_ids),
            "--store-bytes", str(store_bytes), "--parent-pid", parent])

    def _spawn(self, name: str, module_args: List[str]) -> subprocess.Popen:
        log = open(os.path.join(self.session_dir, "logs", f"{name}.log"), "ab")
        try:
            proc = subprocess.Popen([sys.executable, "-m", *module_args],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def check_started(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"a zray process exited at start (code {proc.returncode}); see the logs in "
                    f"{self.session_dir}/logs:\n{self.log_tail()}")

    def log_tail(self) -> str:
        out = []
        logs = os.path.join(self.session_dir, "logs")
        for name in sorted(os.listdir(logs)):
            with open(os.path.join(logs, name), errors="replace") as f:
                text = f.read()[-2000:]
            if text.strip():
                out.append(f"--- {name}\n{text}")
        return "\n".join(out)

    def stop(self, timeout: float = 3.0) -> None:
        # The agent first: it stops its workers and unlinks the arena.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.session_dir, ignore_errors=True)
        _unlink_segments(self.session_dir)


def _unlink_segments(session_dir: str) -> None:
    """Remove the arena if its agent was killed before it could."""
    tag = f"zray_{os.path.basename(session_dir)[-12:]}_"
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        if name.startswith(tag):
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass
