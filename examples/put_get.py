"""Seeds 000/001/002: put and get, single refs and lists of refs."""

import zray as ray

ray.init(num_cpus=2)

x_id = ray.put("example")
print(x_id)
assert ray.get(x_id) == "example"

result_ids = [ray.put(i) for i in range(10)]
assert ray.get(result_ids) == list(range(10))

ref = ray.put([1, 2, 3])
assert ray.get(ref) == [1, 2, 3]


@ray.remote
def f():
    return {"key1": ["value"]}


assert ray.get(f.remote()) == {"key1": ["value"]}
assert ray.get([f.remote() for _ in range(2)]) == [{"key1": ["value"]}] * 2
print("put/get ok")
ray.shutdown()
