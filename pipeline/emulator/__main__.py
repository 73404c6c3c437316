"""Entry point for `python -m pipeline.emulator`: the same command as `pipeline emulator`.

Only starts the click command; its options live in cli.py.
"""

from .cli import emulator_command

if __name__ == "__main__":
    emulator_command(prog_name="python -m pipeline.emulator")
