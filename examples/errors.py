"""Seeds 001/003: task errors, cancel, and error_info."""

import time

import zray as ray

ray.init(num_cpus=1)


@ray.remote
def fail():
    raise ValueError("something broke")


try:
    ray.get(fail.remote())
except ValueError as exc:
    assert isinstance(exc, ray.exceptions.TaskError)
    print("caught:", type(exc).__name__)


@ray.remote
def long_task():
    time.sleep(30)


blocker = long_task.remote()
queued = long_task.remote()
ray.cancel(queued)
try:
    ray.get(queued, timeout=10)
except ray.exceptions.TaskCancelledError:
    print("queued task cancelled")
ray.cancel(blocker, force=True)
print("errors:", [e["task_name"] for e in ray.error_info()])
ray.shutdown()
