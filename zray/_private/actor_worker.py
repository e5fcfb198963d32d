"""The actor a worker hosts: its instance, how its calls run, and its exit.

::

    creation task ──▶ ActorHost.create: the instance; then the runner
    call ──▶ in order on the worker's thread        (max_concurrency=1)
         ──▶ a thread pool per concurrency group    (threaded actor)
         ──▶ an event loop, a limit per group       (async actor)
    exit_actor() ──▶ ActorExit ──▶ the call completes with ActorDiedError;
         once no call runs: atexit handlers, KILL with the reason, process exit

A threaded or async actor runs each call on the pool or loop of the
method's concurrency group (``@zray.method(concurrency_group=...)``, groups
sized by the actor's ``concurrency_groups``); calls of other methods share
the default group of ``max_concurrency``.

Owns: the actor's instance and spec, its runners, the count of calls
running, the exit.  Must not: read the connection or run a task itself; it
calls the worker's ``run_task``/``complete`` and the client's public verbs.
"""

from __future__ import annotations

import inspect
import os
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional

import zmq

from zray import exceptions
from zray._private import protocol, streaming, validate
from zray._private.protocol import Op
from zray._private.runtime_env import resolve


#: How long an actor that exited waits for the agent to end its process.
KILL_WAIT = 10.0
#: A direct call's answer waits at most this long for those of the calls behind it.
REPLY_WINDOW = 0.001


class ActorExit(SystemExit):
    """Raised by ``exit_actor()``: the actor ends once the current call is over.

    A SystemExit, so ``except Exception`` in the user's code lets it through.
    """


def _ready() -> bool:
    return True


def _terminate() -> None:
    raise ActorExit()


_BUILTINS: Dict[str, Callable[[], Any]] = {"__ray_ready__": _ready,
                                           "__ray_terminate__": _terminate}


def _groups_of(cls: type) -> Dict[str, str]:
    """Method name -> its concurrency group, for methods that name one."""
    groups = {}
    for name in dir(cls):
        options = getattr(getattr(cls, name, None), "__zray_method_options__", None)
        if options and options.get("concurrency_group"):
            groups[name] = options["concurrency_group"]
    return groups


class ActorHost:
    """The actor of one worker (nothing until a creation task runs here)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.instance: Any = None
        self.spec: Optional[dict] = None      # its creation spec
        self.actor_id = b""
        self.class_name = ""
        self.error = ""                       # why the constructor failed
        #: Runs a call concurrently (threaded or async actor); None: in order, inline.
        self.runner: Optional[Callable[[dict, List[Any]], None]] = None
        self.lock = threading.Lock()
        self.running = 0                      # calls handed to the runner, not finished
        self.exit_reason = ""                 # set by exit_actor(): no new call starts
        self.exiting = threading.Event()      # the process is on its way out
        self.direct: Any = None               # the ROUTER callers on this node call it on
        self.replies: Dict[bytes, List[tuple]] = {}  # caller -> answers held for a batch
        self.replies_lock = threading.Lock()
        self.replies_due = False              # a timer sends the held answers soon

    # ------------------------------------------------------------------ creation
    def create(self, cls: type, spec: dict, *args: Any, **kwargs: Any) -> None:
        self.spec = spec
        self.actor_id = spec.get("actor_id", b"")
        self.class_name = spec.get("class_name", cls.__name__)
        if spec.get("env_vars"):
            os.environ.update(spec["env_vars"])  # for the actor's whole life
            resolve.inherit_env_vars(spec["env_vars"])  # ... and its calls' own tasks
        try:
            self.instance = cls(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, ActorExit):
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self.error = f"{type(exc).__name__}: {exc}\n{tb}"
            raise
        groups = spec.get("concurrency_groups") or {}
        concurrency = int(spec.get("max_concurrency", 1))
        if spec.get("is_async"):
            self.start_event_loop(concurrency, groups, _groups_of(cls))
        elif concurrency > 1 or groups:
            self.start_threads(concurrency, groups, _groups_of(cls))
        self.open_direct()

    def method(self, spec: dict) -> Any:
        name = spec["method"]
        if self.instance is None:
            raise exceptions.ActorDiedError(
                f"actor {self.class_name} is not available: its constructor raised: "
                f"{self.error or 'it was never created'}")
        builtin = _BUILTINS.get(name)
        if builtin is not None:
            return builtin
        try:
            return getattr(self.instance, name)
        except AttributeError:
            raise AttributeError(f"actor {self.class_name} has no method {name!r}") from None

    # ------------------------------------------------------------------ direct calls
    def open_direct(self) -> None:
        """Take calls straight from callers on this node (see client/direct.py):
        bound before the creation's TASK_DONE, so before the agent offers it."""
        client = self.worker.client
        endpoint = protocol.direct_endpoint(client.agent_address, client.identity)
        if endpoint and self.direct is None:
            self.direct = client.side_socket(zmq.ROUTER, self.on_direct)
            self.direct.bind(endpoint)

    def on_direct(self, frames: List[Any]) -> None:
        """DIRECT_CALL: queued with the calls the agent sends; each answered to its
        caller (``reply``) and to the agent (TASK_DONE), which knows of it already."""
        caller = frames[0]
        op, body, raw = protocol.decode(frames[1:])
        if op != Op.DIRECT_CALL:
            raise protocol.ProtocolError(f"expected DIRECT_CALL, got {op.name}")
        validate.check(op, body, raw)
        tasks = self.worker.tasks
        for spec in body["tasks"]:
            spec["reply_to"] = caller
            tasks.append((Op.EXECUTE, {"task": spec}, ()))

    def reply(self, spec: dict, done: dict, frames: List[Any]) -> None:
        """Answer a direct call: at once when nothing is queued behind it (or calls
        run concurrently), else with the answers of the calls that follow."""
        if self.runner is not None:  # calls run on other threads: each answered alone
            self.send_reply(spec["reply_to"], done, frames)
            return
        with self.replies_lock:
            held = self.replies.setdefault(spec["reply_to"], [])
            held.append((done, frames))
            now = not self.worker.tasks or len(held) >= 64
            later = not now and not self.replies_due
            self.replies_due = self.replies_due or later
        if now:
            self.flush_replies()
        elif later:  # the next call may run long: its predecessors' answers do not wait
            timer = threading.Timer(REPLY_WINDOW, self.flush_replies)
            timer.daemon = True
            timer.start()

    def flush_replies(self) -> None:
        with self.replies_lock:
            replies, self.replies = self.replies, {}
            self.replies_due = False
        for caller, held in replies.items():
            self.send_reply(caller, *(protocol.pack_batch(held) if len(held) > 1 else held[0]))

    def send_reply(self, caller: bytes, body: dict, frames: List[Any]) -> None:
        self.worker.client.send_on(self.direct, [caller, *protocol.encode(
            Op.DIRECT_REPLY, body, *frames)])

    def direct_args(self, spec: dict) -> List[Any]:
        """A direct call's ref arguments, which no agent resolved: got here."""
        from zray.object_ref import ObjectRef

        return self.worker.client.get([ObjectRef(oid) for oid in spec["deps"]], None)

    # ------------------------------------------------------------------ runners
    def start_threads(self, size: int, groups: Dict[str, int],
                      method_groups: Dict[str, str]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        default = ThreadPoolExecutor(size, thread_name_prefix="zray-actor")
        pools = {group: ThreadPoolExecutor(count, thread_name_prefix=f"zray-actor-{group}")
                 for group, count in groups.items()}

        def run(body: dict, raw: List[Any]) -> None:
            spec = body["task"]
            group = spec.get("concurrency_group") or method_groups.get(spec["method"])
            self.call_started()
            pools.get(group, default).submit(self.run_call, body, raw)

        self.runner = run

    def run_call(self, body: dict, raw: List[Any]) -> None:
        try:
            if self.exit_reason:
                self.refuse(body)
            else:
                self.worker.run_task(body, raw)
        finally:
            self.call_finished()

    def start_event_loop(self, size: int, groups: Dict[str, int],
                         method_groups: Dict[str, str]) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        ready = threading.Event()
        limits: Dict[Optional[str], Any] = {}

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            limits[None] = asyncio.Semaphore(size)
            for group, count in groups.items():
                limits[group] = asyncio.Semaphore(count)
            ready.set()
            loop.run_forever()

        threading.Thread(target=run_loop, name="zray-actor-loop", daemon=True).start()
        ready.wait()

        async def call(body: dict, raw: List[Any]) -> None:
            spec = body["task"]
            try:
                group = spec.get("concurrency_group") or method_groups.get(spec["method"])
                async with limits.get(group, limits[None]):
                    if self.exit_reason:
                        self.refuse(body)
                        return
                    await self.run_async(spec, body, raw)
            finally:
                self.call_finished()

        def run(body: dict, raw: List[Any]) -> None:
            self.call_started()
            asyncio.run_coroutine_threadsafe(call(body, raw), loop)

        self.runner = run

    async def run_async(self, spec: dict, body: dict, raw: List[Any]) -> None:
        worker = self.worker
        try:
            fn, args, kwargs = worker.prepare(spec, body, raw)
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
            if "generator" in spec:
                value = await streaming.drain_async(worker, spec, value)
        except BaseException as exc:
            worker.complete(spec, None, exc)
        else:
            worker.complete(spec, value, None)

    def call_started(self) -> None:
        with self.lock:
            self.running += 1

    def call_finished(self) -> None:
        with self.lock:
            self.running -= 1
            done = self.running <= 0 and bool(self.exit_reason)
        if done:
            self.exit_now()

    # ------------------------------------------------------------------ exit
    def exit_requested(self, spec: dict) -> exceptions.ActorDiedError:
        """A call raised ActorExit: what its caller sees.  No call starts after it."""
        where = "its constructor" if spec.get("new_actor") else spec.get("name", "a method")
        self.exit_reason = (f"the actor {self.class_name} exited on purpose: exit_actor() "
                            f"was called in {where}")
        return exceptions.ActorDiedError(self.exit_reason)

    def refuse(self, body: dict) -> None:
        """A call that arrived after exit_actor(): it fails without running."""
        client = self.worker.client
        client.release_pins(client.adopt_pins(body.get("args", ())))
        spec = body["task"]
        self.worker.complete(spec, None, exceptions.ActorDiedError(
            f"cannot run {spec.get('name', 'the call')}: {self.exit_reason}"))

    def exit_if_asked(self) -> None:
        """After an inline call: end the process if that call asked to."""
        if self.exit_reason and self.running <= 0:
            self.exit_now()

    def exit_now(self) -> None:
        """Run the atexit handlers, tell the agent why, and end the process."""
        with self.lock:
            if self.exiting.is_set():
                return
            self.exiting.set()
        worker = self.worker
        client = worker.client
        try:
            worker.flush_output()
            self.flush_replies()  # direct callers hear before the process goes
            client.flush()  # the TASK_DONEs of the calls that ran go first
            _run_atexit_handlers()
            worker.flush_output()
            worker.dump_profile()
            if self.instance is not None:
                # The agent ends this process once it has read the KILL (after
                # those TASK_DONEs); an exit of our own could reach it first, as
                # a crash.  (A constructor that exited made the actor dead already.)
                client.send(protocol.encode(Op.KILL, {
                    "actor_id": self.actor_id, "no_restart": True, "reason": self.exit_reason}))
                threading.Event().wait(KILL_WAIT)
            client.close()
        finally:
            os._exit(0)

    def wait_if_exiting(self) -> None:
        """The worker's loop is ending: let an exit under way finish it instead."""
        if self.exiting.is_set() or self.exit_reason:
            threading.Event().wait()  # os._exit ends this process


def _run_atexit_handlers() -> None:
    """The handlers the actor's code registered; zray's own shutdown is not run
    (it would close the connection the exit still needs)."""
    import atexit

    import zray

    atexit.unregister(zray.shutdown)
    atexit._run_exitfuncs()
