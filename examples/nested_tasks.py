"""Seed 000: remote functions that launch remote functions."""

import zray as ray

ray.init(num_cpus=2)


@ray.remote
def sub_experiment(i, j):
    return i + j


@ray.remote
def run_experiment(i):
    sub_results = [sub_experiment.remote(i, j) for j in range(10)]
    return sum(ray.get(sub_results))


results = [run_experiment.remote(i) for i in range(5)]
assert ray.get(results) == [45, 55, 65, 75, 85]
print(ray.get(results))
ray.shutdown()
