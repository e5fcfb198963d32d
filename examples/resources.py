"""Seeds 001/003: resources, not worker counts."""

import zray as ray

ray.init(num_cpus=4, num_gpus=2, resources={"Custom": 2})
print(ray.cluster_resources())


@ray.remote(num_gpus=1)
def uses_gpu():
    return ray.get_gpu_ids()


@ray.remote(resources={"Custom": 1}, num_cpus=0.5)
def uses_custom():
    return "custom"


assert len(ray.get(uses_gpu.remote())) == 1
assert ray.get([uses_custom.remote() for _ in range(4)]) == ["custom"] * 4
print(ray.available_resources())
ray.shutdown()
