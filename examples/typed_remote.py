"""Seed 002: the typed remote form, checked when a task is submitted."""

import numpy as np

import zray as ray

ray.init(num_cpus=2)


@ray.remote([int, int], [int])
def add(a, b):
    return a + b


assert ray.get(add.remote(1, 2)) == 3
try:
    add.remote(1, "two")
except TypeError as exc:
    print("caught at submit:", exc)
else:
    raise AssertionError("a wrong type must fail at submit")


@ray.remote([list], [np.ndarray])
def zeros(shape):
    return np.zeros(shape)


@ray.remote([np.ndarray, np.ndarray], [np.ndarray])
def dot(a, b):
    return np.dot(a, b)


aref = zeros.remote([10, 10])
bref = zeros.remote([10, 10])
assert ray.get(dot.remote(aref, bref)).shape == (10, 10)
ray.shutdown()
