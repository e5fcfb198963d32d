"""Seed 001: whenever one task finishes, start another (ray.wait)."""

import zray as ray

ray.init(num_cpus=2)


@ray.remote
def f():
    return 1


remaining_ids = [f.remote() for _ in range(5)]
total = 0
for _ in range(100):
    ready_ids, remaining_ids = ray.wait(remaining_ids)
    total += sum(ray.get(ready_ids))
    remaining_ids.append(f.remote())
assert total == 100
print("wait loop ok")
ray.shutdown()
