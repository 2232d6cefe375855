"""The ``timestep`` command line.

Kept to one function so that ``import timestep.cli`` costs nothing: the commands, and rich with
them, load only when a command runs, which keeps ``timestep --help`` quick.
"""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``timestep`` console script."""
    from .app import cli
    from .threads import exit_now

    try:
        cli.main(prog_name="timestep")
    except SystemExit as done:
        exit_now(done.code)  # a cancelled tool still runs in a thread: leave without joining it
        raise
