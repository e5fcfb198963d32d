"""The ``zray`` command line (click).

Kept light: each command imports what it needs when it runs, so
``zray --help`` answers at once.  Commands are added to the ``main`` group
with ``@main.command()``; cluster commands (head, worker, status, stop)
belong here alongside ``microbenchmark``.
"""

from __future__ import annotations

import sys
from typing import Optional

import click

from zray import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zray")
def main() -> None:
    """zray: Ray's API for tasks, actors and objects, on a ZeroMQ bus."""


@main.command()
@click.option("--quick", is_flag=True,
              help="Smaller counts: done in about a minute on a 2-core machine.")
@click.option("--compare", type=click.Choice(["ray"]), default=None,
              help="Also run the same workloads against Ray and show the ratio.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--ray-python", metavar="PATH", default=None,
              help="Python that has Ray installed (default: $ZRAY_BENCH_RAY_PYTHON, "
                   "else this interpreter).")
@click.option("--num-cpus", type=click.IntRange(min=1), default=2, show_default=True,
              help="num_cpus given to init() on both sides.")
def microbenchmark(quick: bool, compare: Optional[str], as_json: bool,
                   ray_python: Optional[str], num_cpus: int) -> None:
    """Measure task, actor and object throughput and latency.

    Each system runs in a fresh child process; progress goes to stderr,
    the table (or JSON) to stdout.
    """
    from zray._private import microbenchmark as mb

    status = mb.run(quick=quick, compare=compare, as_json=as_json, ray_python=ray_python,
                    num_cpus=num_cpus, echo=click.echo)
    sys.exit(status)


if __name__ == "__main__":
    main(prog_name="zray")
