"""Tasks can submit tasks: each experiment runs ten sub-experiments in parallel."""

import zray as ray

ray.init(num_cpus=4)


@ray.remote
def sub_experiment(i, j):
    # The jth sub-experiment of the ith experiment.
    return i + j


@ray.remote
def run_experiment(i):
    sub_results = []
    # Ten sub-experiments, launched from inside this task.
    for j in range(10):
        sub_results.append(sub_experiment.remote(i, j))
    # The sum of their results.
    return sum(ray.get(sub_results))


results = [run_experiment.remote(i) for i in range(5)]
values = ray.get(results)
print("experiments:", values)
assert values == [45, 55, 65, 75, 85]

ray.shutdown()
