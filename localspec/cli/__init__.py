"""The `localspec` command line. Each command lives in its own module; settings are built there
and handed to the engine. `main` turns every failure into one line on stderr."""

from __future__ import annotations

import importlib
import os
import sys

import click

from localspec.cli.common import note
from localspec.errors import LocalspecError

COMMAND_MODULES = ("generate", "info", "bench", "widen", "index", "tune", "chat", "serve")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="localspec")
def cli() -> None:
    """localspec: fast local LLM decoding with lossless speculative decoding."""


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"localspec.cli.{_name}")
    cli.add_command(getattr(_module, _name))


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="localspec", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        note("aborted")
        return 130
    except click.UsageError as exc:
        note(f"error: {exc.format_message()}")
        return 2
    except click.ClickException as exc:
        note(f"error: {exc.format_message()}")
        return exc.exit_code
    except LocalspecError as exc:
        note(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last resort: a one-line report instead of a traceback
        if os.environ.get("LOCALSPEC_DEBUG"):
            raise
        note(f"internal error: {type(exc).__name__}: {exc} (set LOCALSPEC_DEBUG=1 for details)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

