"""Seeds 000/003/004: ten one-second tasks finish in about one second (resources, not cores)."""

import time

import zray as ray

ray.init(num_cpus=10)


@ray.remote
def f2():
    time.sleep(1)


start = time.time()
ray.get([f2.remote() for _ in range(10)])
elapsed = time.time() - start
print(f"ten sleeps in {elapsed:.2f}s")
assert elapsed < 5


@ray.remote
def f(x):
    time.sleep(1)
    return x


assert ray.get([f.remote(i) for i in range(4)]) == [0, 1, 2, 3]
ray.shutdown()
