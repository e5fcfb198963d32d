"""multiprocessing.Pool on zray: the stdlib's Pool interface, with the pool's
processes as zray actors spread over the cluster.

Also times the same small maps on the stdlib's own Pool, for a rough idea of
the cost of going through zray on one machine (on a cluster, zray's Pool
uses every node's CPUs; the stdlib's only this machine's).
"""

import multiprocessing
import os
import time

import zray as ray
from zray.util.multiprocessing import Pool

TRIVIAL_CALLS = 2000
SLOW_CALLS = 100


def square(x):
    return x * x


def ten_ms(x):
    time.sleep(0.01)
    return x


def add(a, b):
    return a + b


def set_up(greeting):
    # Runs once in each of the pool's processes.
    os.environ["POOL_GREETING"] = greeting


def greet(name):
    return f"{os.environ['POOL_GREETING']}, {name} (pid {os.getpid()})"


def rate(pool, fn, calls, chunksize=None):
    start = time.perf_counter()
    pool.map(fn, range(calls), chunksize)
    return calls / (time.perf_counter() - start)


def rates(pool):
    pool.map(square, range(10))  # start the processes before timing
    return (rate(pool, square, TRIVIAL_CALLS), rate(pool, square, TRIVIAL_CALLS // 4, 1),
            rate(pool, ten_ms, SLOW_CALLS))


def compare():
    """Calls per second of the same maps on both pools, two processes each."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        stdlib = rates(pool)
    with Pool(2) as pool:
        ours = rates(pool)
    print("calls/s      trivial  trivial, chunksize=1   10 ms")
    for name, row in (("stdlib Pool", stdlib), ("zray Pool  ", ours)):
        print(f"{name}  {row[0]:8.0f}  {row[1]:20.0f}  {row[2]:6.0f}")


if __name__ == "__main__":
    # The stdlib's pool forks this process: let it do so before zray starts threads.
    with multiprocessing.get_context("fork").Pool(2) as warm:
        assert warm.map(square, range(4)) == [0, 1, 4, 9]
    ray.init(num_cpus=2)

    with Pool(initializer=set_up, initargs=("hello",)) as pool:  # one process per CPU
        print(pool.map(square, range(10)))
        print(list(pool.imap(square, range(5), chunksize=2)))
        print(sorted(pool.imap_unordered(square, range(5))))
        print(pool.starmap(add, [(1, 2), (3, 4)]))
        result = pool.apply_async(add, (20, 22))
        print(result.get(timeout=30))
        print(pool.apply(greet, ("zray",)))
        try:
            pool.map(int, ["1", "two"])
        except ValueError as exc:  # the function's own exception type
            print("ValueError:", exc)

    pool = Pool(2, maxtasksperchild=2)  # each process is replaced after two chunks
    pids = pool.map(lambda _: os.getpid(), range(8), chunksize=1)
    pool.close()
    pool.join()
    print(f"{len(set(pids))} processes ran 8 chunks")

    compare()
    ray.shutdown()
