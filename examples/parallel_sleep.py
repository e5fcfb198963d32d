"""Independent tasks run in parallel: ten sleeps take about as long as one.

The documents sleep for 1-5 s per task; here each sleep is 0.5 s.
"""

import time

import zray as ray

SLEEP = 0.5

ray.init(num_cpus=10)


def f1():
    time.sleep(SLEEP)


@ray.remote
def f2():
    time.sleep(SLEEP)


# One after another: ten sleeps.
start = time.time()
[f1() for _ in range(10)]
serial = time.time() - start
print(f"serial: {serial:.2f}s")

# As tasks: all ten at once, with ten CPUs.
start = time.time()
ray.get([f2.remote() for _ in range(10)])
parallel = time.time() - start
print(f"ten tasks in parallel: {parallel:.2f}s")
assert parallel < 5


# Tasks that return values: four at once, results in submission order.
@ray.remote
def f(x):
    time.sleep(SLEEP)
    return x


start = time.time()
result_ids = []
for i in range(4):
    result_ids.append(f.remote(i))
results = ray.get(result_ids)
print(f"four tasks: {results} in {time.time() - start:.2f}s")
assert results == [0, 1, 2, 3]

ray.shutdown()
