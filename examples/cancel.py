"""Cancelling tasks: ray.cancel stops a queued task before it runs, or interrupts
a running one; get on its ref then raises TaskCancelledError."""

import time

import zray as ray

ray.init(num_cpus=1)


@ray.remote
def long_task(seconds):
    time.sleep(seconds)
    return seconds


# The only CPU is taken by the first task, so the second one waits in the queue.
running = long_task.remote(60)
queued = long_task.remote(60)
assert ray.wait([queued], timeout=0.2) == ([], [queued])

start = time.time()
ray.cancel(queued)
try:
    ray.get(queued, timeout=30)
    raise AssertionError("a cancelled task has no value")
except ray.exceptions.TaskCancelledError as exc:
    print("queued task:", exc)

# A running task is interrupted; force=True would kill its worker instead.
ray.cancel(running)
try:
    ray.get(running, timeout=30)
    raise AssertionError("a cancelled task has no value")
except ray.exceptions.TaskCancelledError as exc:
    print("running task:", exc)
print(f"both cancelled in {time.time() - start:.2f}s")

# The CPU is free again.
assert ray.get(long_task.remote(0)) == 0

ray.shutdown()
