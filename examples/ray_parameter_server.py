"""A parameter server as a Ray user writes it: a named actor in a namespace,
workers that find it by name, retried tasks, and the state API's names.

Runs unchanged on Ray: only the import line says zray.
"""

import numpy as np

import zray as ray

ray.init(num_cpus=2, namespace="training")


@ray.remote
class ParameterServer:
    def __init__(self, dim: int):
        self.params = np.zeros(dim)
        self.updates = 0

    def apply(self, *grads):
        self.params = self.params - 0.5 * np.mean(grads, axis=0)
        self.updates += 1
        return self.params

    def get(self):
        return self.params


@ray.remote(max_retries=2, retry_exceptions=[ConnectionError])
def gradient(step: int, worker: int, target: float = 1.0):
    # Workers look the server up by name, as in a real training job.
    ps = ray.get_actor("ps", namespace="training")
    params = ray.get(ps.get.remote())
    rng = np.random.default_rng(step * 100 + worker)
    return params - target + rng.normal(0, 0.001, size=params.shape)


ps = ParameterServer.options(name="ps").remote(8)
assert ray.util.list_named_actors() == ["ps"]
for step in range(20):
    grads = [gradient.remote(step, w) for w in range(4)]
    ray.get(ps.apply.remote(*grads))

params = ray.get(ps.get.remote())
assert np.allclose(params, 1.0, atol=0.01), params
same = ParameterServer.options(name="ps", get_if_exists=True).remote(8)
assert np.allclose(ray.get(same.get.remote()), params)  # the same server
print(f"parameters converged to {params.round(3).tolist()}")
ray.shutdown()
