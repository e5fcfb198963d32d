"""Resources: tasks are placed by the CPUs, GPUs and custom resources they ask for.

The numbers given to init are what the scheduler hands out; they may exceed
the machine's real cores. GPUs given here are logical: a task that asks for
one sees its ID in ray.get_gpu_ids() and CUDA_VISIBLE_DEVICES.
"""

import os

import zray as ray

ray.init(num_cpus=4, num_gpus=2, resources={"Custom": 2})

total = ray.cluster_resources()
print("cluster:", total)
assert total["CPU"] == 4 and total["GPU"] == 2 and total["Custom"] == 2


@ray.remote(num_cpus=2)
def uses_two_cpus():
    return ray.available_resources().get("CPU", 0)


# While it runs, this task holds 2 of the 4 CPUs.
print("CPUs free during a 2-CPU task:", ray.get(uses_two_cpus.remote()))
assert ray.get(uses_two_cpus.remote()) == 2


@ray.remote(num_gpus=1)
def which_gpu():
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


gpus = ray.get([which_gpu.remote() for _ in range(4)])
print("GPU tasks saw:", gpus)
for ids, visible in gpus:
    assert len(ids) == 1 and visible == str(ids[0])


@ray.remote(resources={"Custom": 1})
def custom_task(x):
    return ray.available_resources().get("Custom", 0), x


free, _ = ray.get(custom_task.remote(0))
assert free <= 1
# .options() changes the request for one call.
free, _ = ray.get(custom_task.options(resources={"Custom": 2}).remote(1))
assert free == 0
assert ray.get(custom_task.options(num_cpus=0.5).remote(2))[1] == 2

# A task asking for more than the cluster has is never scheduled: it waits.
too_big = custom_task.options(resources={"Custom": 3}).remote(3)
ready, not_ready = ray.wait([too_big], timeout=0.5)
print("infeasible task still waiting:", not_ready == [too_big])
assert ready == [] and not_ready == [too_big]
ray.cancel(too_big)

# Everything is handed back once tasks finish.
available = ray.available_resources()
print("available:", available)
assert available.get("CPU") == 4 and available.get("Custom") == 2

ray.shutdown()
