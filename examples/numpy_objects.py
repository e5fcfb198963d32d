"""numpy arrays in the object store: get returns a zero-copy, read-only view.

Objects are immutable, so to change an array you got back, copy it first.
Putting a large array once and passing the ref to many tasks stores it once.
"""

import numpy as np

import zray as ray

ray.init(num_cpus=4)

# An array read back from the store is a read-only view of shared memory.
array = ray.get(ray.put(np.arange(1_000_000)))
print("writeable:", array.flags.writeable, "sum:", array.sum())
assert not array.flags.writeable
assert array.sum() == 499999500000
try:
    array[0] = 1
    raise AssertionError("a stored array must be read-only")
except ValueError as exc:
    print("writing fails:", exc)

mutable = array.copy()
mutable[0] = 1
assert mutable[0] == 1 and array[0] == 0

# The same for arrays inside other objects and for arrays that tasks return.
nested = ray.get(ray.put({"weights": np.ones((500, 500)), "biases": [np.zeros(1000)]}))
assert not nested["weights"].flags.writeable
assert not nested["biases"][0].flags.writeable


@ray.remote
def create_matrix(size):
    return np.random.normal(size=size)


@ray.remote
def multiply_matrices(x, y):
    return np.dot(x, y)


x_id = create_matrix.remote([1000, 1000])
y_id = create_matrix.remote([1000, 1000])
z_id = multiply_matrices.remote(x_id, y_id)
z = ray.get(z_id)
print("z:", z.shape, "read-only:", not z.flags.writeable)
assert z.shape == (1000, 1000)
assert not z.flags.writeable
assert np.allclose(z, np.dot(ray.get(x_id), ray.get(y_id)))


# A large argument: passed by value it is stored once per call; put once, it
# is stored once and every task reads the same copy.
@ray.remote
def f(x):
    return x.shape


x = np.zeros(10 ** 6)
by_value = ray.get([f.remote(x) for _ in range(10)])
x_id = ray.put(x)
by_ref = ray.get([f.remote(x_id) for _ in range(10)])
assert by_value == by_ref == [(10 ** 6,)] * 10
print("ten tasks saw shape", by_ref[0])

ray.shutdown()
