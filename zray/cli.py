"""The ``zray`` command line (click).

Kept light: each command imports what it needs when it runs, so
``zray --help`` answers at once.
"""

from __future__ import annotations

import click

from zray import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zray")
def main() -> None:
    """zray: Ray's API for tasks, actors and objects, on a ZeroMQ bus."""
