"""Objects: ray.put stores a value and returns a ref; ray.get turns refs back into values.

Objects are immutable once stored. get blocks until the object exists, and
accepts a single ref or a list of refs; a timeout bounds the wait. The
session starts as the documents of that time started it: ten workers, killed
when the interpreter exits.
"""

import time

import zray as ray

ray.services.start_ray_local(num_workers=10)

# put/get of a string and a list.
x_id = ray.put("example")
print("put returns a ref:", x_id)
assert ray.get(x_id) == "example"

ref = ray.put([1, 2, 3])
print("get:", ray.get(ref))
assert ray.get(ref) == [1, 2, 3]

x_id = ray.put(1)
assert ray.get(x_id) == 1

# get of a list of refs returns a list of values, in order.
result_ids = [ray.put(i) for i in range(10)]
values = ray.get(result_ids)
print("list of refs:", values)
assert values == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


# Task results are objects too.
@ray.remote
def f():
    return {"key1": ["value"]}


one = ray.get(f.remote())
both = ray.get([f.remote() for _ in range(2)])
print("one:", one, "two:", both)
assert one == {"key1": ["value"]}
assert both == [{"key1": ["value"]}, {"key1": ["value"]}]


# get waits for an object that does not exist yet; with a timeout it gives up.
@ray.remote
def slow(value):
    time.sleep(1)
    return value


pending = slow.remote("done")
try:
    ray.get(pending, timeout=0.1)
    raise AssertionError("get should have timed out")
except ray.exceptions.GetTimeoutError as exc:
    print("timed out as expected:", exc)
assert ray.get(pending, timeout=30) == "done"
print("after waiting:", ray.get(pending))

ray.shutdown()
