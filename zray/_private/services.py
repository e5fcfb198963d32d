"""Starting and stopping zray's processes.

An embedded session (``zray.init()`` with no address) is a session
directory (mode 0700) holding the sockets and logs, a head process and one
node agent, both children of the driver and both watching it: if the driver
dies they exit on their own.  ``stop`` ends them and removes the directory.

Start-up order matters more than anything else for how soon the first task
runs: the agent is started first, before the driver loads its own client
(the two start side by side), and the head only once the agent has answered,
because a single-node session never waits on the head and on a small machine
its start would only take CPU from the agent and the worker template.  The
agent's ZeroMQ socket reconnects until the head binds.

This module is imported by ``zray.init()`` before the processes start, so it
imports little: psutil and socket only where a cluster command needs them.
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
from typing import Any, Dict, List, Optional, Tuple

from zray._private import ids, protocol
from zray._private.startup import dashboard_url_from, read_lines


#: Unix socket paths hold 107 bytes; a session adds up to 44 to the root.
MAX_ROOT_LEN = 107 - 44


def session_root() -> str:
    root = os.path.join(os.environ.get("ZRAY_TMPDIR", tempfile.gettempdir()), "zray_sessions")
    if len(root) > MAX_ROOT_LEN:
        raise ValueError(f"zray keeps its sockets under {root}, which is too long for a Unix "
                         f"socket path ({MAX_ROOT_LEN} characters at most); set ZRAY_TMPDIR "
                         f"to a shorter directory")
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


def total_memory() -> int:
    """Bytes of physical memory (psutil's ``virtual_memory().total``)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = -1
    if total > 0:
        return total
    import psutil  # platforms without these sysconf names

    return psutil.virtual_memory().total


def default_store_bytes() -> int:
    # 30% of memory, as users of shared-memory stores expect, but capped so a
    # laptop session does not claim gigabytes it will never use (the arena is
    # sparse: untouched pages cost nothing).
    return int(min(total_memory() * 0.3, 8 * 1024 ** 3))


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; psutil where there is no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import psutil  # start-up stays cheap where /proc answers

    return int(psutil.virtual_memory().available)


def default_memory_bytes(store_bytes: int) -> int:
    """The ``memory`` resource a node declares: 70% of the memory available at
    start, less the object store's share (never below zero)."""
    return max(int(available_memory() * 0.7) - int(store_bytes), 0)


def node_resources(num_cpus: float, num_gpus: float, resources: Dict[str, float],
                   store_bytes: int) -> Dict[str, float]:
    """What a node offers: CPUs, GPUs, custom resources and ``memory`` (bytes;
    a ``memory`` given in ``resources`` wins)."""
    total = {"CPU": float(num_cpus), **resources}
    if num_gpus:
        total["GPU"] = float(num_gpus)
    total.setdefault("memory", float(default_memory_bytes(store_bytes)))
    return total


class LocalSession:
    """The processes of an embedded single-node cluster.

    Creating one starts the node agent; ``start_head`` starts the head, once
    the driver has heard from the agent (see the module's docstring).
    """

    def __init__(self, *, num_cpus: float, gpu_ids: List[int], num_gpus: float,
                 resources: Dict[str, float], store_bytes: int) -> None:
        self.session_dir = tempfile.mkdtemp(prefix="zray_session_", dir=session_root())
        os.chmod(self.session_dir, 0o700)
        os.makedirs(os.path.join(self.session_dir, "logs"))
        self.node_id = ids.new_id()
        self.head_address = f"ipc://{self.session_dir}/zray_head.sock"
        self.pub_address = f"ipc://{self.session_dir}/zray_pub.sock"
        self.agent_address = f"ipc://{self.session_dir}/zray_agent_{self.node_id.hex()[:8]}.sock"
        self.resources = node_resources(num_cpus, num_gpus, resources, store_bytes)
        self.procs: List[subprocess.Popen] = []
        self.head: Optional[subprocess.Popen] = None
        log = open(os.path.join(self.session_dir, "logs",
                                f"workers_{self.node_id.hex()[:8]}.log"), "ab")
        try:
            self.template = subprocess.Popen(
                [sys.executable, "-m", "zray._private.worker_main", "--template",
                 "--agent", self.agent_address, "--node", self.node_id.hex()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=dict(os.environ, ZRAY_SESSION_DIR=self.session_dir),
                close_fds=True, start_new_session=True)
        finally:
            log.close()
        fds = (self.template.stdin.fileno(), self.template.stdout.fileno())
        self.agent = self._spawn("node", [
            "zray._private.agent", "--session-dir", self.session_dir,
            "--node-id", self.node_id.hex(), "--head", self.head_address,
            "--resources", json.dumps(self.resources),
            "--gpu-ids", ",".join(str(g) for g in gpu_ids),
            "--store-bytes", str(store_bytes), "--parent-pid", str(os.getpid()),
            "--template", f"{self.template.pid},{fds[0]},{fds[1]}"], pass_fds=fds)
        self.template.stdin.close()   # the agent holds the template's pipes now
        self.template.stdout.close()

    def start_head(self, dashboard: str = "") -> Optional[str]:
        """Start the head; with ``dashboard`` (``HOST:PORT``), it serves the
        dashboard there: returns its URL once it listens."""
        if self.head is not None:
            return None
        args = ["zray._private.head", "--bind", self.head_address, "--pub", self.pub_address,
                "--parent-pid", str(os.getpid()), "--session-dir", self.session_dir]
        if not dashboard:
            self.head = self._spawn("head", args)
            return None
        ready_r, ready_w = os.pipe()
        try:
            try:
                self.head = self._spawn("head", args + [
                    "--dashboard", dashboard, "--ready-fd", str(ready_w)], pass_fds=(ready_w,))
            finally:
                os.close(ready_w)
            url, error = dashboard_url_from(read_lines(ready_r, "dashboard", timeout=20.0))
        finally:
            os.close(ready_r)
        if url is None:
            raise ClusterError(error)
        return url

    def _spawn(self, name: str, module_args: List[str],
               pass_fds: Tuple[int, ...] = ()) -> subprocess.Popen:
        log = open(os.path.join(self.session_dir, "logs", f"{name}.log"), "ab")
        try:
            proc = subprocess.Popen([sys.executable, "-m", *module_args],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, pass_fds=pass_fds)
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
        return log_tail(self.session_dir)

    def stop(self, timeout: float = 3.0) -> None:
        # The agent (started first) first: it stops its workers and unlinks the arena.
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        # The template goes last, when the agent has closed its stdin.
        for proc in self.procs + [self.template]:
            try:
                proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.session_dir, ignore_errors=True)
        _unlink_segments(self.session_dir)


def log_tail(session_dir: str) -> str:
    out = []
    logs = os.path.join(session_dir, "logs")
    for name in sorted(os.listdir(logs)):
        with open(os.path.join(logs, name), errors="replace") as f:
            text = f.read()[-2000:]
        if text.strip():
            out.append(f"--- {name}\n{text}")
    return "\n".join(out)


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


# --------------------------------------------------------------------------- clusters
#
# `zray head` and `zray worker` start detached processes (they outlive the
# command) in a session directory of their own, and write what they started
# to RECORD there (mode 0600: it holds the token).  `zray stop`, `zray
# status` and `zray.init(address=...)` find clusters through these records.

RECORD = "cluster.json"
DEFAULT_PORT = 6380


class ClusterError(RuntimeError):
    """A cluster command could not do what was asked; the message says why."""


def split_address(address: str) -> Tuple[str, int]:
    address = address.strip()
    for prefix in ("tcp://", "zray://"):
        if address.startswith(prefix):
            address = address[len(prefix):]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"a cluster address is HOST:PORT (as `zray head` prints it), "
                           f"got {address!r}")
    return host, int(port)


def ip_towards(host: str) -> str:
    """This machine's address as seen from ``host`` (loopback for a local head)."""
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return "127.0.0.1"
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, 9))  # UDP: nothing is sent
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def head_query(address: str, token: str, what: str = "status", timeout: float = 5.0,
               **extra: Any) -> dict:
    """Ask a head over TCP (with the token) and return its reply (a ``protocol.HeadReply``).

    ``what`` is ``nodes``, ``status``, ``snapshot`` or ``state`` (with the fields
    of ``protocol.StateQuery`` in ``extra``).
    """
    import socket

    import zmq

    from zray._private import security
    from zray._private.protocol import Op

    host, port = split_address(address)
    keys = security.Keys(token)
    try:
        socket.create_connection((host, port), timeout=min(timeout, 3.0)).close()
    except OSError as exc:
        raise ClusterError(f"nothing answers at {host}:{port} ({exc.strerror or exc}); is "
                           f"`zray head` running there?") from None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keys.join(sock)
    try:
        sock.connect(f"tcp://{host}:{port}")
        query: Any = dict(extra, req=1, what=what)
        sock.send_multipart(protocol.encode(Op.HEAD_QUERY, query))
        if not sock.poll(int(timeout * 1000)):
            raise ClusterError(f"{host}:{port} accepts connections but did not answer within "
                               f"{timeout:g} s: the token is wrong for this cluster, or it is "
                               f"not a zray head")
        op, body, _ = protocol.decode(sock.recv_multipart())
    except protocol.ProtocolError as exc:
        raise ClusterError(f"{host}:{port} answered in a way this zray does not read ({exc}): "
                           f"is it a head of the same zray version?") from None
    finally:
        sock.close(0)
        ctx.term()
    if op != Op.HEAD_REPLY:
        raise ClusterError(f"the head at {host}:{port} answered {op.name} to a query")
    if body.get("error"):
        raise ClusterError(f"the head at {host}:{port} answered: {body['error']}")
    return body


def read_records() -> List[dict]:
    """Records of the clusters this machine's user started, newest first."""
    out = []
    root = session_root()
    for name in os.listdir(root):
        path = os.path.join(root, name, RECORD)
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        record["session_dir"] = os.path.join(root, name)
        out.append(record)
    out.sort(key=lambda r: r.get("started", 0), reverse=True)
    return out


def _same_endpoint(a: str, b: str) -> bool:
    import socket

    try:
        (ha, pa), (hb, pb) = split_address(a), split_address(b)
    except ClusterError:
        return False
    local = {"127.0.0.1", "localhost", "0.0.0.0", socket.gethostname()}
    return pa == pb and (ha == hb or (ha in local and hb in local))


def find_record(address: Optional[str]) -> dict:
    """The running node on this machine that belongs to ``address`` ("auto": any)."""
    records = [r for r in read_records() if _record_alive(r)]
    if address not in (None, "auto"):
        records = [r for r in records if _same_endpoint(r["address"], address)]
    if not records:
        where = "" if address in (None, "auto") else f" for {address}"
        raise ClusterError(f"no zray node{where} is running on this machine: start one with "
                           f"`zray head` (or `zray worker --address HOST:PORT` to join a "
                           f"cluster), then connect")
    records.sort(key=lambda r: r.get("kind") != "head")
    return records[0]


def _record_alive(record: dict) -> bool:
    """Whether the node's agent (its last process) runs: it serves drivers even
    while its cluster's head is down."""
    procs = record.get("procs", [])
    return bool(procs) and _is_ours(procs[-1])


def _is_ours(proc: dict) -> bool:
    """Whether the recorded process still runs (same pid, same start time, ours)."""
    import psutil

    try:
        p = psutil.Process(proc["pid"])
        return abs(p.create_time() - proc["created"]) < 1.0 and p.status() != "zombie"
    except (psutil.Error, KeyError):
        return False


class ClusterNode:
    """The processes of one node started by `zray head` or `zray worker`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.session_dir = tempfile.mkdtemp(prefix=f"zray_{kind}_", dir=session_root())
        os.chmod(self.session_dir, 0o700)
        os.makedirs(os.path.join(self.session_dir, "logs"))
        self.node_id = ids.new_id()
        self.procs: List[subprocess.Popen] = []

    def spawn(self, name: str, module_args: List[str], token: str,
              pass_fds: Tuple[int, ...] = ()) -> subprocess.Popen:
        log = open(os.path.join(self.session_dir, "logs", f"{name}.log"), "ab")
        env = dict(os.environ, ZRAY_TOKEN=token)
        try:
            proc = subprocess.Popen([sys.executable, "-m", *module_args],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True, env=env,
                                    pass_fds=pass_fds)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def start_agent(self, head_address: str, token: str, node_ip: str, *, num_cpus: float,
                    gpu_ids: List[int], num_gpus: float, resources: Dict[str, float],
                    store_bytes: int) -> None:
        total = node_resources(num_cpus, num_gpus, resources, store_bytes)
        self.resources = total
        self.agent_address = \
            f"ipc://{self.session_dir}/zray_agent_{self.node_id.hex()[:8]}.sock"
        self.spawn("node", [
            "zray._private.agent", "--session-dir", self.session_dir,
            "--node-id", self.node_id.hex(), "--head", head_address,
            "--resources", json.dumps(total), "--gpu-ids", ",".join(map(str, gpu_ids)),
            "--store-bytes", str(store_bytes), "--node-ip", node_ip], token)

    def wait_joined(self, address: str, token: str, timeout: float = 20.0) -> None:
        """Until the head lists this node as alive, or a process fails."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                nodes = head_query(address, token, "nodes", timeout=2.0)["nodes"]
            except ClusterError:
                nodes = []
            if any(n["node_id"] == self.node_id.hex() and n["alive"] for n in nodes):
                return
            if time.monotonic() > deadline:
                tail = log_tail(self.session_dir)
                self.stop()
                raise ClusterError(f"the node agent did not join {address} within "
                                   f"{timeout:g} s:\n{tail}")
            time.sleep(0.1)  # polling a process we started in another session

    def wait_told(self, fd: int, wanted: str, timeout: float) -> List[str]:
        """Until the head writes the line ``wanted`` on its start-up pipe ``fd``;
        returns every line it wrote.

        Fails as soon as a process of this node exits (the pipe's end tells of
        the head's at once; the others are looked at every 0.2 s).
        """
        import select

        deadline = time.monotonic() + timeout
        pending = b""
        told: List[str] = []
        while True:
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                tail = log_tail(self.session_dir)
                self.stop()
                raise ClusterError(f"the node did not start within {timeout:g} s:\n{tail}")
            if not select.select([fd], [], [], min(left, 0.2))[0]:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:  # the head is gone: wait for its exit, so its log is complete
                try:
                    self.procs[0].wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
                self.check_alive()
                self.stop()
                raise ClusterError("the head closed its start-up pipe before the node joined")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            told += [line.decode(errors="replace") for line in lines]
            if wanted in told:
                return told

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                tail = log_tail(self.session_dir)
                self.stop()
                raise ClusterError(f"a zray process exited at start (code {proc.returncode})"
                                   f":\n{tail}")

    def write_record(self, address: str, token: str, **extra: Any) -> dict:
        import psutil

        record = {**extra, "kind": self.kind, "address": address, "token": token,
                  "node_id": self.node_id.hex(), "agent_address": self.agent_address,
                  "resources": self.resources, "started": time.time(),
                  "procs": [{"pid": p.pid, "created": psutil.Process(p.pid).create_time()}
                            for p in self.procs]}
        path = os.path.join(self.session_dir, RECORD)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        record["session_dir"] = self.session_dir
        return record

    def stop(self) -> None:
        stop_processes([p.pid for p in reversed(self.procs)])
        for proc in self.procs:
            if proc.poll() is None:
                proc.wait()
        shutil.rmtree(self.session_dir, ignore_errors=True)
        _unlink_segments(self.session_dir)


def start_head(*, host: str, port: int, num_cpus: float, gpu_ids: List[int], num_gpus: float,
               resources: Dict[str, float], store_bytes: int, dashboard: str = "") -> dict:
    """Start a cluster's head and this machine's node; with ``dashboard``
    (``HOST:PORT``) the head serves the dashboard there (the record's
    ``dashboard_url``; its ``dashboard_error`` says why not, if it could not)."""
    from zray._private import security

    token = security.new_token()
    node = ClusterNode("head")
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    address = f"{connect_host}:{port}"
    # The head and its node's agent start side by side (the agent's socket
    # reconnects until the head listens); the head says on a pipe when the
    # agent has joined, or dies (e.g. the port is taken: its log says so).
    ready_r, ready_w = os.pipe()
    try:
        try:
            extra = ["--dashboard", dashboard] if dashboard else []
            node.spawn("head", ["zray._private.head", "--bind", f"tcp://{host}:{port}",
                                "--pub", f"tcp://{host}:0", "--ready-fd", str(ready_w),
                                "--session-dir", node.session_dir, *extra],
                       token, pass_fds=(ready_w,))
        finally:
            os.close(ready_w)
        node.start_agent(f"tcp://{address}", token, ip_towards(connect_host), num_cpus=num_cpus,
                         gpu_ids=gpu_ids, num_gpus=num_gpus, resources=resources,
                         store_bytes=store_bytes)
        told = node.wait_told(ready_r, f"joined {node.node_id.hex()}", timeout=20.0)
    finally:
        os.close(ready_r)
    record = node.write_record(address, token, bind=host, dashboard=dashboard)
    if dashboard:
        url, error = dashboard_url_from(told)
        record["dashboard_url" if url else "dashboard_error"] = url or error
    return record


def start_worker(*, address: str, token: str, num_cpus: float, gpu_ids: List[int],
                 num_gpus: float, resources: Dict[str, float], store_bytes: int) -> dict:
    host, port = split_address(address)
    address = f"{host}:{port}"
    head_query(address, token, "nodes")  # a wrong address or token fails here, clearly
    node = ClusterNode("worker")
    node.start_agent(f"tcp://{address}", token, ip_towards(host), num_cpus=num_cpus,
                     gpu_ids=gpu_ids, num_gpus=num_gpus, resources=resources,
                     store_bytes=store_bytes)
    node.wait_joined(address, token)
    return node.write_record(address, token)


def stop_processes(pids: List[int], timeout: float = 5.0) -> List[int]:
    """SIGTERM, then SIGKILL what is left after ``timeout``; returns the pids that ran."""
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2)
    return [p.pid for p in procs]


def stop_record(record: dict) -> List[int]:
    """Stop one recorded node (its processes, if still ours) and remove its files."""
    pids = [p["pid"] for p in reversed(record.get("procs", [])) if _is_ours(p)]
    stopped = stop_processes(pids)
    shutil.rmtree(record["session_dir"], ignore_errors=True)
    _unlink_segments(record["session_dir"])
    return stopped
