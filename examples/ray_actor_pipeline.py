"""An actor pipeline as a Ray user writes it: an ActorPool of stateful
workers, an async actor, an actor that restarts after a crash, and one that
ends itself with ``exit_actor``.

Runs unchanged on Ray: only the import line says zray.
"""

import asyncio
import os

import zray as ray
from zray.exceptions import RayActorError
from zray.util import ActorPool

with ray.init(num_cpus=2):

    @ray.remote
    class Tokenizer:
        SEP = " "

        def __init__(self, lower: bool = True):
            self.lower = lower

        def tokens(self, text: str):
            text = text.lower() if self.lower else text
            return text.split(Tokenizer.SEP)

    pool = ActorPool([Tokenizer.remote(), Tokenizer.remote(lower=False)])
    lines = ["Hello World", "Ray Programs", "Run Unchanged"]
    out = sorted(map(tuple, pool.map(lambda a, line: a.tokens.remote(line), lines)))
    assert len(out) == 3 and Tokenizer.SEP == " "

    @ray.remote
    class Fetcher:
        async def fetch(self, i: int) -> int:
            await asyncio.sleep(0.01)
            return i * i

    fetcher = Fetcher.remote()
    assert ray.get([fetcher.fetch.remote(i) for i in range(10)]) == [i * i for i in range(10)]

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Fragile:
        def __init__(self):
            self.ctx = ray.get_runtime_context()

        def pid(self):
            return os.getpid()

        def reconstructed(self):
            return ray.get_runtime_context().was_current_actor_reconstructed

        def crash_once(self, marker: str):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the process dies; the call runs again on the restarted actor
            return "survived"

    fragile = Fragile.remote()
    first = ray.get(fragile.pid.remote())
    assert ray.get(fragile.reconstructed.remote()) is False
    marker = os.path.join(ray.get_runtime_context().get_job_id() + ".crashed")
    marker = os.path.abspath(marker)
    try:
        assert ray.get(fragile.crash_once.remote(marker), timeout=60) == "survived"
        assert ray.get(fragile.pid.remote()) != first
        assert ray.get(fragile.reconstructed.remote()) is True
    finally:
        if os.path.exists(marker):
            os.unlink(marker)

    @ray.remote
    class OneShot:
        def work(self):
            return "done"

        def close(self):
            ray.actor.exit_actor()

    one = OneShot.remote()
    assert ray.get(one.work.remote()) == "done"
    one.close.remote()
    try:
        ray.get(one.work.remote(), timeout=30)
    except RayActorError:
        pass
    else:
        raise AssertionError("an actor that exited takes no more calls")
    print("pipeline ok")
