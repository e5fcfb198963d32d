"""Seeds 001/004: numpy arrays in the store (zero-copy, read-only) and matrix tasks."""

import numpy as np

import zray as ray

ray.init(num_cpus=2)

x = np.zeros(10 ** 6)
x_id = ray.put(x)
value = ray.get(x_id)
assert not value.flags.writeable  # objects are immutable: copy before changing


@ray.remote
def f(arr):
    return arr.shape


assert ray.get([f.remote(x_id) for _ in range(10)]) == [(10 ** 6,)] * 10


@ray.remote
def create_matrix(size):
    return np.random.normal(size=size)


@ray.remote
def multiply_matrices(x, y):
    return np.dot(x, y)


x_id = create_matrix.remote([300, 300])
y_id = create_matrix.remote([300, 300])
z = ray.get(multiply_matrices.remote(x_id, y_id))
assert z.shape == (300, 300)
print("numpy ok")
ray.shutdown()
