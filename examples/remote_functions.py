"""Remote functions: .remote() returns a ref at once; the task runs asynchronously.

Arguments may be values or refs; refs express dependencies between tasks.
A function can return several objects (num_returns, or the older
num_return_vals spelling).
"""

import zray as ray

ray.init(num_cpus=4)


def add1(a, b):
    return a + b


@ray.remote
def add2(a, b):
    return a + b


assert add1(1, 2) == 3
x_id = add2.remote(1, 2)
print("add2.remote(1, 2) ->", x_id, "->", ray.get(x_id))
assert ray.get(x_id) == 3

# Arguments by value or by ref behave the same.
same = [add2.remote(1, 2), add2.remote(1, ray.put(2)), add2.remote(ray.put(1), ray.put(2))]
assert ray.get(same) == [3, 3, 3]

# A remote function can't be called directly.
try:
    add2(1, 2)
    raise AssertionError("a direct call should fail")
except TypeError as exc:
    print("direct call:", exc)


# @ray.remote is a plain function too: f = ray.remote(f).
def triple(x):
    return 3 * x


triple = ray.remote(triple)
assert ray.get(triple.remote(5)) == 15


# Several return values, one ref each.
@ray.remote(num_return_vals=3)
def return_multiple():
    return 1, 2, 3


a_id, b_id, c_id = return_multiple.remote()
print("num_return_vals=3 ->", ray.get([a_id, b_id, c_id]))
assert ray.get([a_id, b_id, c_id]) == [1, 2, 3]


@ray.remote(num_return_vals=2)
def two():
    return 1, 2


x_id, y_id = two.remote()
assert ray.get(x_id) == 1
assert ray.get(y_id) == 2


@ray.remote(num_returns=3)
def three():
    return "a", "b", "c"


refs = three.remote()
assert ray.get(list(refs)) == ["a", "b", "c"]

# num_returns can also be set per call with .options().
p, q = add2.options(num_returns=2).remote((10,), (20,))
assert ray.get([p, q]) == [10, 20]


# Dependencies: each task waits for the one before it.
@ray.remote
def f(x):
    return x + 1


x_id = f.remote(0)
assert ray.get(x_id) == 1
y_id = f.remote(x_id)
assert ray.get(y_id) == 2

x = f.remote(0)
y = f.remote(x)
z = f.remote(y)
print("f(f(f(0))) =", ray.get(z))
assert ray.get(z) == 3

ray.shutdown()
