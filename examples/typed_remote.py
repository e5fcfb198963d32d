"""The typed form of remote: @ray.remote([argument types], [return types]).

Argument types are checked when the task is submitted, so a wrong type
fails on the caller's line rather than later in a worker.
"""

import time

import numpy as np

import zray as ray

ray.init(num_cpus=10)


@ray.remote([int, int], [int])
def add(a, b):
    return a + b


ref = add.remote(1, 2)
assert ray.get(ref) == 3
assert ray.get([add.remote(1, 2), add.remote(1, ray.put(2)),
                add.remote(ray.put(1), ray.put(2))]) == [3, 3, 3]

try:
    add.remote("1", 2)
    raise AssertionError("a str where an int is declared should fail")
except TypeError as exc:
    print("caught at submission:", exc)


# Ten independent sleeps (0.5 s here, 5 s in the documents) run in parallel.
@ray.remote([float], [int])
def sleep(n):
    time.sleep(n)
    return 0


start = time.time()
result_refs = []
for i in range(10):
    result_refs.append(sleep.remote(0.5))
values = [ray.get(ref) for ref in result_refs]
print(f"{values} in {time.time() - start:.2f}s")
assert values == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


@ray.remote([list], [np.ndarray])
def zeros(shape):
    return np.zeros(shape)


@ray.remote([np.ndarray, np.ndarray], [np.ndarray])
def dot(a, b):
    return np.dot(a, b)


# The two zeros tasks can run in parallel; dot waits for both.
aref = zeros.remote([10, 10])
bref = zeros.remote([10, 10])
cref = dot.remote(aref, bref)
c = ray.get(cref)
print("dot:", c.shape, c.sum())
assert c.shape == (10, 10)
assert not c.any()

ray.shutdown()
