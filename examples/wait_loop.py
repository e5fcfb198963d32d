"""ray.wait splits refs into (ready, not ready): react to tasks as they finish."""

import time

import zray as ray

ray.init(num_cpus=4)


@ray.remote
def f():
    return 1


# Start 5 tasks; whenever one finishes, start a new one.
remaining_ids = [f.remote() for i in range(5)]
total = 0
for _ in range(100):
    ready_ids, remaining_ids = ray.wait(remaining_ids)
    assert len(ready_ids) == 1 and len(remaining_ids) == 4
    # Get the finished object and do something with it.
    value = ray.get(ready_ids)
    print(value, end=" ")
    total += sum(value)
    # Start a new task.
    remaining_ids.append(f.remote())
print()
assert total == 100
assert ray.get(remaining_ids) == [1] * 5


@ray.remote
def sleep_then_return(seconds):
    time.sleep(seconds)
    return seconds


# With a timeout, wait returns when num_returns refs are ready or time runs out.
object_refs = [sleep_then_return.remote(0), sleep_then_return.remote(30)]
ready_refs, remaining_refs = ray.wait(object_refs, num_returns=1, timeout=None)
print("ready:", ray.get(ready_refs), "still running:", len(remaining_refs))
assert ray.get(ready_refs) == [0]
ready_refs, remaining_refs = ray.wait(remaining_refs, num_returns=1, timeout=0.2)
assert ready_refs == [] and len(remaining_refs) == 1
ray.cancel(remaining_refs[0])

ray.shutdown()
