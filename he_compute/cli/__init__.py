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

from ..errors import HECError, HECWarning

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Which module defines each command: a command's module is imported only when that command runs (or help
# lists them all), so ``hec worker`` does not load the client's run machinery, nor ``hec decrypt`` the
# coordinator's.  test_cli checks that this table matches what the modules register.
LAZY = {"compile": "compile", "simulate": "compile", "import-concrete": "models", "keygen": "models", "encrypt": "models",
        "eval": "models", "decrypt": "models", "info": "inspect", "plan": "inspect", "run": "jobs",
        "status": "jobs", "jobs": "jobs", "cancel": "jobs", "gc": "maint", "worker": "worker",
        "audit": "audit", "coordinator": "coordinator"}
_LOADED: set[str] = set()


class _Group(click.Group):
    """Loads commands on first use; maps library errors to one-line messages unless ``--debug`` is on."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY:
            _load(LAZY[name])
        return self.commands.get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HECError as exc:
            if ctx.meta.get("hec.debug"):
                raise
            raise click.ClickException(str(exc)) from None
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
                f"internal error: {type(exc).__name__}: {exc} (re-run with hec --debug for the traceback)"
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
    warnings.showwarning = _show_warning
    warnings.filterwarnings("default", category=HECWarning)  # whatever filters the environment set


_SHOW_WARNING = warnings.showwarning


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """he_compute's own warnings (inputs clipped, saturated) as one ``Warning: ...`` line on stderr."""
    if issubclass(category, HECWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        _SHOW_WARNING(message, category, *args, **kwargs)


def _load(module: str) -> None:
    if module not in _LOADED:
        _LOADED.add(module)
        importlib.import_module(f"{__name__}.{module}").register(main)


def commands() -> dict[str, click.Command]:
    """Every ``hec`` command by name, all loaded (for help texts, docs and tests)."""
    for module in sorted(set(LAZY.values())):
        _load(module)
    return dict(main.commands)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
