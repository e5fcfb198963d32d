"""A script meant to be submitted as a job to a `zray head` cluster:

    zray head
    zray job submit --working-dir examples -- python job_script.py --n 8

Run as a job, it is the cluster's driver: ``zray.init()`` finds the cluster
through ``ZRAY_ADDRESS``, which the head sets for it.  Run by hand
(``python examples/job_script.py``) it starts a local session instead.
"""

import argparse
import os
import socket

import zray


@zray.remote
def square(x: int) -> int:
    return x * x


@zray.remote
def where() -> str:
    return socket.gethostname()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    context = zray.init()
    print(f"connected to {context.address_info['address']}")
    print(f"job {os.environ.get('ZRAY_JOB_SUBMISSION_ID', '(not submitted)')}, "
          f"running in {os.getcwd()}")
    squares = zray.get([square.remote(i) for i in range(args.n)])
    print(f"squares: {squares}")
    print(f"sum: {sum(squares)}")
    hosts = set(zray.get([where.remote() for _ in range(4)]))
    print(f"tasks ran on: {', '.join(sorted(hosts))}")
    zray.shutdown()


if __name__ == "__main__":
    main()
