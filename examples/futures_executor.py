"""concurrent.futures on zray: an Executor whose calls run as zray tasks, and
whose futures are plain concurrent.futures.Future objects."""

import concurrent.futures
import os
import time

import zray as ray
from zray.util.futures import Executor


def slow_square(x, delay=0.05):
    time.sleep(delay)
    return x * x


def where(_):
    return os.getpid()


if __name__ == "__main__":
    ray.init(num_cpus=2)

    with Executor(max_workers=4, num_cpus=1) as executor:
        future = executor.submit(slow_square, 12)
        print("submit:", future.result(timeout=30))

        print("map:", list(executor.map(slow_square, range(8))))
        print("map, chunks of 4:", list(executor.map(slow_square, range(8), chunksize=4)))

        futures = {executor.submit(slow_square, x, delay=0.3 - 0.1 * x): x for x in range(3)}
        for done in concurrent.futures.as_completed(futures, timeout=30):
            print(f"as_completed: {futures[done]} -> {done.result()}")

        failing = executor.submit(int, "not a number")
        try:
            failing.result()
        except ValueError as exc:  # the function's own exception type
            print("ValueError:", exc)

        pids = set(executor.map(where, range(6)))
        print(f"ran in {len(pids)} worker process(es), not in the driver ({os.getpid()}):",
              os.getpid() not in pids)

    ray.shutdown()
