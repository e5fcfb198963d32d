"""A short tour of zray: remote functions, objects, dependencies, wait, actors."""

import time

import numpy as np

import zray as ray

ray.init(num_cpus=4)


@ray.remote
def add(a, b):
    return a + b


@ray.remote
def slow_square(x):
    time.sleep(0.2)
    return x * x


# Remote functions return refs at once; get waits for the values.
assert ray.get(add.remote(1, 2)) == 3
assert ray.get(add.remote(1, ray.put(2))) == 3

# Tasks depend on tasks through refs.
x = add.remote(0, 1)
y = add.remote(x, 1)
print("chain:", ray.get(add.remote(y, 1)))

# Four tasks run in parallel.
start = time.time()
print("squares:", ray.get([slow_square.remote(i) for i in range(4)]),
      f"in {time.time() - start:.2f}s")

# Large arrays live in shared memory and come back zero-copy (read-only).
array = ray.get(ray.put(np.arange(1_000_000)))
print("array sum:", array.sum(), "writeable:", array.flags.writeable)

# wait splits refs into ready and not ready.
refs = [slow_square.remote(i) for i in range(3)]
ready, not_ready = ray.wait(refs, num_returns=1)
print("first ready:", ray.get(ready))


@ray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value


counter = Counter.remote()
for _ in range(3):
    counter.increment.remote()
print("counter:", ray.get(counter.increment.remote()))

ray.shutdown()
