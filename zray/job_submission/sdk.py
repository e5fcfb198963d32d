"""JobSubmissionClient: submit, watch and stop jobs on a `zray head` cluster.

::

    JobSubmissionClient ──DEALER, tcp + CURVE (the cluster token)──▶ head ROUTER
        submit_job ──JOB_SUBMIT [working_dir archive]──▶ the head starts the entrypoint
        get_job_logs / tail_job_logs ──JOB_LOGS from an offset──▶ the job's log file

Submitting a job is running code on the cluster, so it goes only over the
head's authenticated port: the token is required (given, ``$ZRAY_TOKEN``, or
read from this machine's node record), and a wrong one gets no answer.
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

from zray.job_submission.models import JobInfo, JobStatus

#: Seconds between two reads of a running job's log when nothing new came.
FOLLOW_INTERVAL = 0.25


def resolve(address: Optional[str], token: Optional[str]) -> Tuple[str, str]:
    """The head's HOST:PORT and the token: given, from the environment
    (``ZRAY_ADDRESS``, ``ZRAY_TOKEN``), or from this machine's node record."""
    from zray._private import security, services

    address = address or os.environ.get("ZRAY_ADDRESS") or "auto"
    token = token or os.environ.get("ZRAY_TOKEN") or None
    if address.startswith(("http://", "https://")):
        raise ValueError(f"{address} looks like a dashboard URL: jobs go to the head's "
                         f"cluster address (HOST:PORT as `zray head` printed it, port 6380 "
                         f"by default), never to the dashboard")
    try:
        if address == "auto":
            record = services.find_record("auto")
            address, token = record["address"], token or record["token"]
        host, port = services.split_address(address)
        address = f"{host}:{port}"
        if token is None:
            try:
                token = services.find_record(address)["token"]
            except services.ClusterError:
                raise services.ClusterError(
                    f"no token given for {address} and no node of that cluster runs on this "
                    f"machine to take it from: pass the token `zray head` printed (or set "
                    f"$ZRAY_TOKEN)") from None
    except services.ClusterError as exc:
        raise ConnectionError(str(exc)) from None
    return address, security.check_token(token)


class HeadChannel:
    """One authenticated DEALER to the head; requests and their replies, by number."""

    def __init__(self, address: str, token: str, timeout: float) -> None:
        import socket

        import zmq

        from zray._private import security

        self.address = address
        self.timeout = timeout
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=min(timeout, 3.0)).close()
        except OSError as exc:
            raise ConnectionError(f"nothing answers at {address} ({exc.strerror or exc}); is "
                                  f"`zray head` running there?") from None
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        security.Keys(token).join(self.sock)
        self.sock.connect(f"tcp://{address}")
        self.lock = threading.Lock()
        self.req = 0

    def ask(self, op: Any, body: dict, *raw: Any, timeout: Optional[float] = None
            ) -> Tuple[dict, List[bytes]]:
        """Send a request and wait for its reply; RuntimeError if the head refused it."""
        from zray._private import protocol

        timeout = self.timeout if timeout is None else timeout
        with self.lock:
            if self.sock is None:
                raise RuntimeError("this JobSubmissionClient is closed")
            self.req += 1
            req = body["req"] = self.req
            self.sock.send_multipart(protocol.encode(op, body, *raw), copy=len(raw) == 0)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                    raise ConnectionError(
                        f"the head at {self.address} did not answer within {timeout:g} s: "
                        f"the token is wrong for this cluster, or it is not a zray head")
                try:
                    _, reply, frames = protocol.decode(self.sock.recv_multipart())
                except protocol.ProtocolError as exc:
                    raise ConnectionError(f"{self.address} answered in a way this zray does "
                                          f"not read ({exc})") from None
                if reply.get("req") == req:  # else: the late answer of a timed-out request
                    break
        if reply.get("error"):
            raise RuntimeError(reply["error"])
        return reply, [bytes(f) for f in frames]

    def close(self) -> None:
        with self.lock:
            if self.sock is not None:
                self.sock.close(0)
                self.ctx.term()
                self.sock = None


class JobSubmissionClient:
    """Ray's JobSubmissionClient for a zray cluster.

    ``address`` is the head's HOST:PORT (default: ``$ZRAY_ADDRESS``, else the
    cluster this machine belongs to); ``token`` the cluster token (default:
    ``$ZRAY_TOKEN``, else this machine's node record of that cluster).
    """

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None, *,
                 timeout: float = 10.0) -> None:
        from zray._private.protocol import Op

        self.address, token = resolve(address, token)
        self.channel = HeadChannel(self.address, token, timeout)
        try:  # a wrong token or a head that takes no jobs fails here, not later
            self.channel.ask(Op.JOB_LIST, {}, timeout=min(timeout, 5.0))
        except BaseException:
            self.channel.close()
            raise

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "JobSubmissionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _ask(self, op_name: str, body: dict, *raw: Any, timeout: Optional[float] = None
             ) -> Tuple[dict, List[bytes]]:
        from zray._private.protocol import Op

        return self.channel.ask(Op[op_name], body, *raw, timeout=timeout)

    # ------------------------------------------------------------------ Ray's methods
    def submit_job(self, *, entrypoint: str, submission_id: Optional[str] = None,
                   runtime_env: Optional[Dict[str, Any]] = None,
                   metadata: Optional[Dict[str, str]] = None) -> str:
        """Run ``entrypoint`` (a shell command) on the head's machine as a driver of
        the cluster; returns the submission id.  A local ``working_dir`` in
        ``runtime_env`` is packed and sent with the job; it is the job's current
        directory there."""
        if not isinstance(entrypoint, str):
            raise TypeError(f"entrypoint must be a str (a shell command), got "
                            f"{type(entrypoint).__name__}")
        if submission_id is not None and not isinstance(submission_id, str):
            raise TypeError(f"submission_id must be a str, got {type(submission_id).__name__}")
        if metadata is not None and not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise TypeError("metadata must map str to str")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
        body: Dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id or "",
                                "runtime_env": dict(runtime_env or {}),
                                "metadata": dict(metadata or {})}
        raw: Tuple[bytes, ...] = ()
        working_dir = body["runtime_env"].get("working_dir")
        if working_dir is not None:
            from zray._private.runtime_env import packaging

            if isinstance(working_dir, str) and "://" in working_dir:
                raise ValueError(f"runtime_env working_dir {working_dir!r}: only a local "
                                 f"folder or .zip file can be sent with a zray job")
            package = packaging.pack(working_dir, body["runtime_env"].get("excludes", ()))
            body["package"] = package.digest
            raw = (package.data,)
        reply, _ = self._ask("JOB_SUBMIT", body, *raw, timeout=max(self.channel.timeout, 60))
        return reply["submission_id"]

    def get_job_info(self, job_id: str) -> JobInfo:
        reply, _ = self._ask("JOB_INFO", {"submission_id": _job_id(job_id)})
        return JobInfo.from_wire(reply["job"])

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def list_jobs(self) -> List[JobInfo]:
        reply, _ = self._ask("JOB_LIST", {})
        return [JobInfo.from_wire(row) for row in reply.get("jobs", [])]

    def stop_job(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM to its process group, SIGKILL after a grace
        period); False if it had ended already."""
        reply, _ = self._ask("JOB_STOP", {"submission_id": _job_id(job_id)})
        return bool(reply.get("stopped"))

    def delete_job(self, job_id: str) -> bool:
        """Forget an ended job and its log; RuntimeError if it still runs."""
        reply, _ = self._ask("JOB_DELETE", {"submission_id": _job_id(job_id)})
        return bool(reply.get("deleted"))

    def get_job_logs(self, job_id: str) -> str:
        """Everything the job has printed so far (stdout and stderr)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts, offset = [], 0
        while True:
            reply, data = self.read_log(job_id, offset)
            parts.append(decoder.decode(data))
            offset = reply["offset"]
            if not data or offset >= reply["size"]:
                return "".join(parts) + decoder.decode(b"", final=True)

    def read_log(self, job_id: str, offset: int) -> Tuple[dict, bytes]:
        """One piece of the job's log from byte ``offset``, and its reply (``offset``,
        ``size``, ``status`` when read)."""
        reply, frames = self._ask("JOB_LOGS", {"submission_id": _job_id(job_id),
                                               "offset": offset})
        return reply, (frames[0] if frames else b"")

    def tail_job_logs_sync(self, job_id: str) -> Iterator[str]:
        """What the job prints, as it prints it, until it ends (a plain iterator)."""
        tail = _Tail()
        while True:
            reply, data = self.read_log(job_id, tail.offset)
            yield from tail.take(reply, data)
            if tail.done:
                return
            if not data:
                time.sleep(FOLLOW_INTERVAL)

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """What the job prints, as it prints it, until it ends (Ray's async iterator)."""
        import asyncio

        loop = asyncio.get_running_loop()
        tail = _Tail()
        while True:
            reply, data = await loop.run_in_executor(None, self.read_log, job_id, tail.offset)
            for text in tail.take(reply, data):
                yield text
            if tail.done:
                return
            if not data:
                await asyncio.sleep(FOLLOW_INTERVAL)


def _job_id(job_id: Any) -> str:
    if not isinstance(job_id, str):
        raise TypeError(f"a job is named by its submission id (a str), got "
                        f"{type(job_id).__name__}")
    return job_id


class _Tail:
    """Where a reader of a job's log is: its offset, a decoder that keeps a UTF-8
    character split between two reads whole, and whether the log has ended."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0
        self.done = False

    def take(self, reply: dict, data: bytes) -> List[str]:
        self.offset = reply["offset"]
        texts = [self.decoder.decode(data)]
        self.done = JobStatus(reply["status"]).is_terminal() and self.offset >= reply["size"]
        if self.done:
            texts.append(self.decoder.decode(b"", final=True))
        return [text for text in texts if text]
