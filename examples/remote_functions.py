"""Seeds 000/001: remote functions, arguments by value or ref, multiple returns, chains."""

import zray as ray

ray.init(num_cpus=2)


@ray.remote
def add2(a, b):
    return a + b


assert ray.get(add2.remote(1, 2)) == 3
assert ray.get(add2.remote(1, ray.put(2))) == 3
assert ray.get(add2.remote(ray.put(1), ray.put(2))) == 3


@ray.remote(num_return_vals=3)
def return_multiple():
    return 1, 2, 3


a_id, b_id, c_id = return_multiple.remote()
assert ray.get([a_id, b_id, c_id]) == [1, 2, 3]


@ray.remote(num_returns=2)
def two():
    return 1, 2


x_id, y_id = two.remote()
assert (ray.get(x_id), ray.get(y_id)) == (1, 2)


@ray.remote
def f(x):
    return x + 1


x = f.remote(0)
y = f.remote(x)
z = f.remote(y)
assert ray.get(z) == 3
print("remote functions ok")
ray.shutdown()
