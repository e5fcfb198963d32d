"""Workers, and the template they are forked from.

::

    node agent ──stdin: "spawn <id>"──▶ template (pre-imported, single thread)
               ◀─stdout: "spawned <id> <pid>" / "exited <pid> <status>"
                                           │ fork
                                           ▼
                                   worker ──DEALER──▶ node agent

The template imports zray, numpy, cloudpickle and pyzmq once; a new worker
is a fork of it and costs milliseconds.  The template creates no ZeroMQ
context and no threads, so forking it is safe.  It reaps its children and
reports each exit at once, which is how the agent sees a crashed worker
without waiting for a heartbeat.  When the agent closes the template's
stdin (or dies), the template kills its workers and exits.

A worker's own state lives here, in :class:`Worker`: the queue of EXECUTE
and EXIT messages, the task running, the count of BLOCKED sent (which tells
stale tasks sent ahead from live ones), cancels of tasks not yet started.
Its actor, if it hosts one, is an :class:`~zray._private.actor_worker.ActorHost`.
It reaches the agent only through the client's public verbs and the
handlers it registers with ``Client.listen``; it must not touch the
client's socket, outbox or object tables.

A worker started for a runtime environment sets it up at its first task
(:class:`~zray._private.runtime_env.setup.Environment`); one whose environment
has ``pip`` is told so on its spawn line and execs that environment's
interpreter (``--worker``) before it connects.

A task that raises an exception its ``retry_exceptions`` names is reported
``retryable`` (the agent runs it again while its retries last); an ``async
def`` task runs on the worker's event loop.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import os
import selectors
import signal
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import cloudpickle

from zray import exceptions
from zray._private import protocol, serialization, state, streaming
from zray._private.actor_worker import ActorExit, ActorHost
from zray._private.client import Client, Descriptor, decode_args
from zray._private.options import apply_env, restore_env
from zray._private.protocol import ObjectKind, Op
from zray._private.runtime_env import resolve as runtime_env_resolve
from zray._private.runtime_env import setup as runtime_env_setup


# ---------------------------------------------------------------------- template
def template_main(agent_address: str) -> None:
    import zmq  # noqa: F401

    warm = False  # numpy: once the first workers are forked and nothing is asked

    children: set = set()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's business
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    pending = b""

    def report(line: str) -> None:
        os.write(1, (line + "\n").encode())

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            report(f"exited {pid} {_describe_status(status)}")

    try:
        while True:
            events = selector.select(timeout=0.05 if children and not warm else 1.0)
            if not events and children and not warm:
                import numpy  # noqa: F401  (so later workers start warm)
                import zray.actor  # noqa: F401
                warm = True
            for key, _ in events:
                if key.fd == wake_r:
                    os.read(wake_r, 512)
                    continue
                data = os.read(0, 65536)
                if not data:
                    return
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    parts = line.decode().split()
                    if len(parts) in (2, 3) and parts[0] == "spawn":
                        pid = os.fork()
                        if pid == 0:
                            _child(agent_address, bytes.fromhex(parts[1]), wake_r, wake_w,
                                   parts[2] if len(parts) == 3 else "")
                        children.add(pid)
                        report(f"spawned {parts[1]} {pid}")
            reap()
            if os.getppid() == 1:
                return
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal-{os.WTERMSIG(status)}"
    return f"exit-{os.WEXITSTATUS(status)}"


def _child(agent_address: str, worker_id: bytes, wake_r: int, wake_w: int,
           pip_env: str = "") -> None:
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)  # the template's stdout is the agent's pipe: not for us
        sys.stdin = open(os.devnull)
        if pip_env:  # a runtime_env with pip: its virtualenv's interpreter, if it builds
            runtime_env_setup.switch_interpreter(pip_env, agent_address, worker_id)
        worker_loop(agent_address, worker_id)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


# ---------------------------------------------------------------------- worker
class LogStream:
    """sys.stdout/stderr of a worker: whole lines go to the driver of the task's job."""

    def __init__(self, worker: "Worker", err: bool) -> None:
        self.worker = worker
        self.err = err
        self.partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.partial += text
        if "\n" in self.partial:
            *lines, self.partial = self.partial.split("\n")
            self._send(lines)
        return len(text)

    def flush(self) -> None:
        if self.partial:
            lines, self.partial = [self.partial], ""
            self._send(lines)

    def _send(self, lines: List[str]) -> None:
        task = self.worker.current_task or {}
        self.worker.client.log(task.get("job_id", b""), task.get("name", "worker"), lines,
                               stderr=self.err)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 2 if self.err else 1

    @property
    def encoding(self) -> str:
        return "utf-8"


class Worker:
    """Runs what the agent sends this worker: its task queue, the task running,
    its actor.  Registers with the client for EXECUTE, EXIT and INTERRUPT and
    for the hook around a blocking get/wait; build it before the client
    connects, so no task that arrives at once is missed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.functions: Dict[bytes, Any] = {}
        self.pid = os.getpid()
        self.gpu_ids: List[int] = []
        self.host = ActorHost(self)
        self.event_loop: Any = None   # for async def tasks, made on first use
        self.retry_types: Dict[bytes, tuple] = {}   # pickled retry_exceptions -> types
        self.profiler: Any = None
        self.profile_path = ""
        self.profile_due = 0.0
        self.tasks: "collections.deque" = collections.deque()  # (op, body, raw): EXECUTE, EXIT
        self.current_task: Optional[dict] = None   # the spec of the task running
        self.blocked_count = 0   # BLOCKED messages sent: older tasks sent ahead were taken back
        self.skip: set = set()   # tasks sent ahead and cancelled before they started
        self.next_up: Optional[bytes] = None   # the task about to start (see loop)
        self.environment = runtime_env_setup.Environment()  # its runtime_env, if any
        client.listen(Op.EXECUTE, self.on_execute)
        client.listen(Op.EXIT, self.on_exit)
        # After the reader steps down: a KeyboardInterrupt must not land in
        # the middle of dispatching.
        client.listen(Op.INTERRUPT, self.on_interrupt, after_read=True)
        client.wait_hook = self.before_wait

    @property
    def actor(self) -> Any:
        """The instance of the actor hosted here, or None."""
        return self.host.instance

    @property
    def actor_spec(self) -> Optional[dict]:
        """The creation spec of the actor hosted here, or None."""
        return self.host.spec

    # ------------------------------------------------------------------ from the agent
    def on_execute(self, body: dict, raw: List[Any]) -> None:
        self.tasks.extend([(Op.EXECUTE, one, frames)
                           for one, frames in protocol.unpack_batch(body, raw)])

    def on_exit(self, body: dict, raw: List[Any]) -> None:
        self.tasks.append((Op.EXIT, body, raw))

    def on_interrupt(self, body: dict, raw: Any = ()) -> None:
        tid = body.get("task_id")
        task = self.current_task
        if task is not None and task["task_id"] == tid:
            os.kill(self.pid, signal.SIGKILL if body.get("force") else signal.SIGINT)
        elif tid == self.next_up or self.host.direct is not None or any(
                queued[1].get("task", {}).get("task_id") == tid for queued in self.tasks):
            # Sent ahead and not started (or a direct call still on its way): never start it.
            if len(self.skip) > 1000:
                self.skip.clear()  # cancels of calls that had finished: forget them
            self.skip.add(tid)

    def before_wait(self) -> Optional[Callable[[], None]]:
        """A get/wait is about to block: the agent may lend this worker's CPU."""
        if self.current_task is None:
            return None
        self.blocked_count += 1
        self.client.blocked()
        return self.client.unblocked

    def next_task(self) -> Optional[tuple]:
        """The next ``(op, body, raw)`` for this worker (None once the connection is lost)."""
        tasks = self.tasks
        if not tasks:
            self.client.outbox.flush_idle()  # idle now: let go of what the last task held
            self.client.wait_until(lambda: bool(tasks))
        return tasks.popleft() if tasks else None

    def loop(self) -> None:
        client = self.client
        while True:
            try:
                item = self.next_task()
                if item is None or item[0] == Op.EXIT:  # connection lost, or retired
                    self.host.flush_replies()
                    self.host.wait_if_exiting()
                    return
                op, body, raw = item
                tid = body["task"]["task_id"]
                if "epoch" in body:  # sent ahead while the previous task ran
                    if body["epoch"] < self.blocked_count:
                        client.release_pins(client.adopt_pins(body.get("args", ())))
                        continue  # ... and taken back when that one blocked
                    self.next_up = tid
                    try:
                        client.receive_pending()  # a cancel of it may be waiting
                    finally:
                        self.next_up = None
                if self.skip and tid in self.skip:
                    self.skip.discard(tid)
                    client.release_pins(client.adopt_pins(body.get("args", ())))
                    self.complete(body["task"], None, KeyboardInterrupt())
                    continue
                self.execute(body, raw)
                if self.profiler is not None and time.monotonic() >= self.profile_due:
                    self.dump_profile()  # workers are killed at shutdown: dump as we go
            except KeyboardInterrupt:
                continue  # a cancel that arrived after its task ended

    def start_profile(self, path: str) -> None:
        import cProfile

        self.profiler = cProfile.Profile()
        self.profile_path = path
        self.profile_due = time.monotonic() + 1.0
        self.profiler.enable()

    def dump_profile(self) -> None:
        if self.profiler is not None:
            self.profiler.dump_stats(self.profile_path)  # this stops the profiler
            self.profiler.enable()
            self.profile_due = time.monotonic() + 1.0

    # ------------------------------------------------------------------ running
    def execute(self, body: dict, raw: List[Any]) -> None:
        spec = body["task"]
        host = self.host
        if host.direct is None:
            host.open_direct()  # callers may be lent this worker (or call its actor) directly
        if "method" in spec and host.runner is not None:
            host.runner(body, raw)  # threaded or async actor: runs concurrently
        else:
            self.run_task(body, raw)
            if host.exit_reason:
                host.exit_if_asked()  # exit_actor() in the constructor or a method

    def run_task(self, body: dict, raw: List[Any]) -> None:
        client = self.client
        spec = body["task"]
        gpu_ids = body.get("gpu_ids") or []
        if gpu_ids or self.gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
            self.gpu_ids = gpu_ids
        self.current_task = spec
        client.job_id = spec.get("job_id", client.job_id)
        started = time.perf_counter()
        try:
            try:
                fn, args, kwargs = self.prepare(spec, body, raw)
                env = spec.get("env_vars") if not spec.get("new_actor") else None
                before = apply_env(env) if env else None
                if env:  # what the call submits inherits them
                    inherited = runtime_env_resolve.inherit_env_vars(env)
                try:
                    value = fn(*args, **kwargs)
                    if inspect.iscoroutine(value):
                        value = self.run_coroutine(value)
                    if "generator" in spec:
                        value = streaming.drain(self, spec, value)
                finally:
                    if before is not None:
                        restore_env(before)
                        runtime_env_resolve.inherit_env_vars(inherited)
            finally:
                self.flush_output()
        except KeyboardInterrupt:
            self.complete(spec, None, KeyboardInterrupt(), started)
        except BaseException as exc:
            self.complete(spec, None, exc, started)
        else:
            self.complete(spec, value, None, started, body.get("result_space"))
        finally:
            self.current_task = None

    @staticmethod
    def flush_output() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass

    def prepare(self, spec: dict, body: dict, raw: List[Any]):
        """The callable and arguments of a task, actor creation or actor call."""
        client = self.client
        pinned = client.adopt_pins(body.get("args", ()))
        try:
            renv = spec.get("runtime_env")
            if renv is not None:  # set up at the first task; its packages are no arguments
                body = self.environment.enter(renv, body, client, raw)
            if "method" in spec:
                fn = self.host.method(spec)
            elif spec.get("new_actor"):
                cls = self.load_function(spec["function_id"], body, raw)
                fn = functools.partial(self.host.create, cls, spec)
            else:
                fn = self.load_function(spec["function_id"], body, raw)
            args, kwargs = self.load_args(spec, body, raw)
        finally:
            # The argument views hold pins of their own; a task that failed
            # before reading its arguments gives the agent's pins back here.
            client.release_pins(pinned)
        return fn, args, kwargs

    def complete(self, spec: dict, value: Any, exc: Optional[BaseException],
                 started: float = 0.0, reserved: Optional[list] = None) -> None:
        """Store a task's results (or its failure) and tell the agent.

        With ``started`` (a perf_counter reading), the agent also hears how
        long the task ran: it sends quick tasks ahead.  ``reserved`` is
        ``[offset, size]`` of store space the agent set aside for the result
        (the EXECUTE's ``result_space``).
        """
        name = spec.get("name", "task")
        returns = protocol.returns_of(spec)
        results: List[dict] = []
        frames: List[Any] = []
        error_text = ""
        retryable = exc is not None and self.retries_on(spec, exc)
        if exc is None:
            try:
                values = self.split_returns(value, len(returns), name)
                for oid, item in zip(returns, values):
                    results.append(self.store_result(oid, item, frames, name, reserved))
                    reserved = None
            except BaseException as store_exc:
                exc = store_exc
        if exc is not None:
            error_text, data = self.failure(spec, name, exc)
            results, frames = self.error_results(returns, data)
        done: protocol.TaskDone = {"task_id": spec["task_id"], "results": results,
                                   "error": error_text}
        if retryable:
            done["retryable"] = True
        lazy = False
        if "reply_to" in spec:  # a direct call: its caller hears first
            done["direct"] = True
            self.host.reply(spec, done, frames)
            lazy = not retryable and all(r["kind"] != ObjectKind.SHARED and "contained" not in r
                                         for r in results)
        if started:
            done["run_seconds"] = time.perf_counter() - started
        # Queued, not sent: results of a run of quick tasks go back together.
        self.client.task_done(done, frames, lazy)

    def failure(self, spec: dict, name: str, exc: BaseException) -> Tuple[str, bytes]:
        """``(error text, pickled error)`` of a task that raised ``exc``."""
        if isinstance(exc, KeyboardInterrupt):
            return f"task {name} was interrupted", serialization.system_error(
                exceptions.TaskCancelledError(f"task {name} was cancelled while running"))
        if isinstance(exc, ActorExit):
            exc = self.host.exit_requested(spec)
        if isinstance(exc, exceptions.ActorDiedError):
            return f"{type(exc).__name__}: {exc}", serialization.system_error(exc)
        return f"{type(exc).__name__}: {exc}", serialization.serialize_error(exc, name, self.pid)

    def retries_on(self, spec: dict, exc: BaseException) -> bool:
        """Whether ``exc`` is an application error the task's ``retry_exceptions`` names."""
        wanted = spec.get("retry_exceptions")
        if not wanted or not isinstance(exc, Exception) or \
                isinstance(exc, exceptions.ActorDiedError):
            return False
        if wanted is True:
            return True
        types = self.retry_types.get(wanted)
        if types is None:
            try:
                types = tuple(cloudpickle.loads(wanted))
            except Exception:  # a type that does not import here: retry on nothing
                types = ()
            self.retry_types[wanted] = types
        return isinstance(exc, types)

    def run_coroutine(self, coro: Any) -> Any:
        """The result of an ``async def`` task, run on this worker's event loop."""
        import asyncio

        loop = self.event_loop
        if loop is None:
            loop = self.event_loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        except KeyboardInterrupt:
            self.event_loop = None  # interrupted mid-step: start the next on a fresh loop
            loop.close()
            raise

    # ------------------------------------------------------------------ values
    @staticmethod
    def error_results(returns: List[bytes], data: bytes):
        """Every result of a failed task: the same pickled error, one frame."""
        return ([{"object_id": oid, "kind": ObjectKind.ERROR, "layout": [], "frame": 0}
                 for oid in returns], [data])

    def load_function(self, fid: bytes, body: dict, raw: List[Any]) -> Any:
        fn = self.functions.get(fid)
        if fn is None:
            if "function_frame" not in body:
                raise exceptions.ZrayError("the agent sent a task without its function")
            for entry in body.get("sys_path", ()):
                if entry not in sys.path:
                    sys.path.append(entry)
            try:
                fn = cloudpickle.loads(raw[body["function_frame"]])
            except Exception as exc:
                raise exceptions.SerializationError(
                    f"could not unpickle the function of task {body['task'].get('name')}: "
                    f"{type(exc).__name__}: {exc}") from exc
            self.functions[fid] = fn
        return fn

    def load_args(self, spec: dict, body: dict, raw: List[Any]):
        if "reply_to" in spec and "deps" in spec:
            return decode_args(spec, self.host.direct_args(spec))
        client = self.client
        values = [client.materialize(desc["object_id"], Descriptor.from_wire(desc, raw))
                  for desc in body.get("args", ())]
        return decode_args(spec, values)

    @staticmethod
    def split_returns(value: Any, count: int, name: str) -> List[Any]:
        if count == 1:
            return [value]
        if count == 0:
            return []
        try:
            values = list(value)
        except TypeError:
            raise ValueError(f"task {name} declares num_returns={count} but returned "
                             f"a {type(value).__name__}, which is not a sequence") from None
        if len(values) != count:
            raise ValueError(f"task {name} declares num_returns={count} but returned "
                             f"{len(values)} values")
        return values

    def store_result(self, oid: bytes, value: Any, frames: List[Any], name: str,
                     reserved: Optional[list] = None) -> protocol.Descriptor:
        ser = serialization.serialize(value, f"the return value of {name}")
        result: protocol.Descriptor = {"object_id": oid, "layout": ser.layout}
        if ser.contained:
            result["contained"] = ser.contained
        if ser.size <= protocol.INLINE_THRESHOLD:
            result["kind"] = ObjectKind.INLINE
            result["frame"] = len(frames)
            frames.append(ser.to_bytes())
        else:
            client = self.client
            if reserved is not None and ser.size <= reserved[1]:
                offset = reserved[0]  # set aside with the task: no ALLOC round trip
                client.attach_arena()
            else:
                offset = client.allocate(oid, ser.size)
            ser.write_into(client.arena.view(offset, ser.size))
            result.update(kind=ObjectKind.SHARED, offset=offset, size=ser.size)
        return result


def worker_loop(agent_address: str, worker_id: bytes) -> None:
    client = Client(agent_address, "worker", identity=worker_id, job_id=b"")
    worker = Worker(client)  # before connecting: its handlers must see the first task
    state.client = client
    state.worker = worker
    client.connect(pid=os.getpid())
    sys.stdout = LogStream(worker, err=False)
    sys.stderr = LogStream(worker, err=True)
    profile_dir = os.environ.get("ZRAY_PROFILE_DIR")
    try:
        if profile_dir:  # a developer's switch: dump each worker's profile
            worker.start_profile(os.path.join(profile_dir, f"worker_{os.getpid()}.prof"))
        worker.loop()
    finally:
        worker.dump_profile()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        client.close()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zray._private.worker_main")
    parser.add_argument("--template", action="store_true")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--node", default="")
    parser.add_argument("--worker", default="", help="run as this worker (a runtime_env's "
                        "interpreter, exec'd by a forked child)")
    args = parser.parse_args(argv)
    if args.worker:
        worker_loop(args.agent, bytes.fromhex(args.worker))
    else:
        template_main(args.agent)


if __name__ == "__main__":
    main()
