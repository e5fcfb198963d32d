"""Seeds 000/004: a tree reduce of numpy arrays, and slow versus fast aggregation."""

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


data = [generate_data.remote() for _ in range(100)]
while len(data) > 1:
    data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
print("tree reduce shape:", ray.get(data)[0].shape)


@ray.remote
def add(x, y):
    time.sleep(0.2)
    return x + y


values = [1, 2, 3, 4, 5, 6, 7, 8]
start = time.time()
while len(values) > 1:
    values = values[2:] + [add.remote(values[0], values[1])]
assert ray.get(values[0]) == 36
print(f"fast aggregation in {time.time() - start:.2f}s")
ray.shutdown()
