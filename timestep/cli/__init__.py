"""The ``timestep`` command line.

Kept to one function so that ``import timestep.cli`` costs nothing: the commands, and rich with
them, load only when a command runs, which keeps ``timestep --help`` quick.
"""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``timestep`` console script."""
    from .app import cli

    cli.main(prog_name="timestep")
