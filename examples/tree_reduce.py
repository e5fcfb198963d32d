"""Reductions: a chain of dependent tasks takes O(n) steps, a tree takes O(log n).

Also the documents' tree reduce over 100 random numpy vectors.
"""

import time

import numpy as np

import zray as ray

ray.init(num_cpus=4)


@ray.remote
def generate_data():
    return np.random.normal(size=1000)


@ray.remote
def aggregate_data(x, y):
    return x + y


# 100 tasks make data; pairs are summed until one vector is left.
data = [generate_data.remote() for _ in range(100)]
expected = np.sum(ray.get(data), axis=0)
while len(data) > 1:
    data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
(total,) = ray.get(data)
print("tree reduce of 100 vectors:", total.shape, total[:3])
assert total.shape == (1000,)
assert np.allclose(total, expected)

# Adding 1..8 with a slow add (the documents sleep 1 s per add; 0.2 s here).
STEP = 0.2


@ray.remote
def add(x, y):
    time.sleep(STEP)
    return x + y


# Slowly: seven adds, each waiting for the previous one.
start = time.time()
id1 = add.remote(1, 2)
id2 = add.remote(id1, 3)
id3 = add.remote(id2, 4)
id4 = add.remote(id3, 5)
id5 = add.remote(id4, 6)
id6 = add.remote(id5, 7)
id7 = add.remote(id6, 8)
result = ray.get(id7)
print(f"chain: {result} in {time.time() - start:.2f}s (7 steps)")
assert result == 36

# As a tree: three levels.
start = time.time()
id1 = add.remote(1, 2)
id2 = add.remote(3, 4)
id3 = add.remote(5, 6)
id4 = add.remote(7, 8)
id5 = add.remote(id1, id2)
id6 = add.remote(id3, id4)
id7 = add.remote(id5, id6)
result = ray.get(id7)
print(f"tree: {result} in {time.time() - start:.2f}s (3 steps)")
assert result == 36

# The same two shapes written as loops.
values = [1, 2, 3, 4, 5, 6, 7, 8]
while len(values) > 1:
    values = [add.remote(values[0], values[1])] + values[2:]
slow_result = ray.get(values[0])

values = [1, 2, 3, 4, 5, 6, 7, 8]
while len(values) > 1:
    values = values[2:] + [add.remote(values[0], values[1])]
fast_result = ray.get(values[0])
print("loops:", slow_result, fast_result)
assert slow_result == fast_result == 36

ray.shutdown()
