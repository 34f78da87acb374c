"""`python -m inferplane.simulator`: the same as `inferplane simulator` (for subprocesses)."""

import typer

from inferplane.simulator.cli import simulator_command

typer.run(simulator_command)
