"""The ``hec`` command line: a thin skin over the Python API.

Each command opens its files, calls the matching library function and turns a
:class:`~he_compute.errors.HECError` into a one-line ``Error: ...`` and exit
status 1.  ``hec --debug CMD`` shows tracebacks instead.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import click

from ..commands import keep_exit_status
from ..errors import HECError, HECWarning, show_warning
from ..formats.text import printable

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Where each command is defined ("module:function" in this package), as in click's LazyGroup recipe: a
# command's module is imported only when that command runs (or help lists them all), so ``hec worker`` does
# not load the client's run machinery, nor ``hec decrypt`` the coordinator's.  Every command is a plain
# module-level click command that a test can import; test_cli checks this table against the modules.
LAZY = {"audit": "audit:audit", "compile": "compile:compile_cmd", "simulate": "compile:simulate_cmd",
        "coordinator": "coordinator:coordinator", "import-concrete": "crypto:import_concrete_cmd",
        "keygen": "crypto:keygen_cmd", "encrypt": "crypto:encrypt_cmd", "eval": "crypto:eval_cmd",
        "decrypt": "crypto:decrypt_cmd", "gc": "gc:gc_cmd", "info": "info:info_cmd", "plan": "info:plan_cmd",
        "run": "jobs:run_cmd", "status": "jobs:status_cmd", "jobs": "jobs:jobs_cmd", "cancel": "jobs:cancel_cmd",
        "worker": "worker:worker_cmd"}


class _Group(click.Group):
    """Loads commands on first use; maps library errors to one-line messages unless ``--debug`` is on."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY:
            self.add_command(_load(name), name)
        return self.commands.get(name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``hec``'s own options (``hec --bogus``): a usage error is one line too; bare ``hec`` still shows help."""
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _UsageLine(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HECError as exc:
            if ctx.meta.get("hec.debug"):
                raise
            raise click.ClickException(printable(exc)) from None  # workers' and tenants' words included
        except click.UsageError as exc:  # one line too, keeping click's exit status 2 for usage errors
            raise _UsageLine(exc.format_message(), exc.ctx) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader left (`hec info M | head`): click ends quietly, as Unix tools do
            raise
        except Exception as exc:  # an unexpected failure still gets one line
            if ctx.meta.get("hec.debug"):
                raise
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {printable(exc)} (re-run with hec --debug for the traceback)"
            ) from None


class _UsageLine(click.UsageError):
    """A usage error (unknown option, missing argument) as one ``Error: ...`` line naming the help to read."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "hec"
        click.echo(f"Error: {self.format_message()} (see {where} --help)", err=True)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="he_compute")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """he_compute: run models on encrypted data on untrusted workers.

    \b
    Typical flow:
      hec compile model.onnx --calibration X.npy -o model.hec
      hec keygen model.hec --keys keys/
      hec encrypt model.hec X.csv -o x.enc
      hec run x.enc -o y.enc --local-workers 2
      hec decrypt y.enc -o y.csv
    """
    ctx.meta["hec.debug"] = debug
    from ..settings import check_all

    check_all()  # every HEC_* setting checked once, before any command: a bad one is one line naming it
    warnings.showwarning = show_warning
    warnings.filterwarnings("default", category=HECWarning)  # whatever filters the environment set


def entry(argv: list[str] | None = None) -> None:
    """The ``hec`` program (console script and ``python -m he_compute``): :func:`main`, whose failing status
    survives whatever ran in this process (Concrete's exit handler would turn it into 0).  Tests call
    :func:`main` through click's runner instead, which must get its ``SystemExit`` back."""
    try:
        main(argv)
    except SystemExit as exc:
        keep_exit_status(exc.code)
        raise


def _load(name: str) -> click.Command:
    module, attr = LAZY[name].split(":")
    command: click.Command = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    return command


def commands() -> dict[str, click.Command]:
    """Every ``hec`` command by name, all loaded (for help texts, docs and tests)."""
    for name in LAZY:
        main.get_command(click.Context(main), name)
    return dict(main.commands)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
