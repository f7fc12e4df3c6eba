"""``hec info`` and ``hec plan``: what a file holds, and what running a bundle will cost, before paying it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._render import render
from ._util import size as _size


def describe(path: Path) -> dict[str, Any]:
    """The fields ``hec info`` shows for any he_compute file (the raw form ``--json`` prints)."""
    from ..formats import container

    c = container.read(path)
    meta = {k: v for k, v in c.meta.items() if k != "client_digests"}
    return {
        "file": str(path),
        "kind": c.kind,
        "scheme": c.scheme,
        "size": path.stat().st_size,
        "sections": {name: len(data) for name, data in c.sections.items()},
        **meta,
    }


def _readable(desc: dict[str, Any]) -> dict[str, Any]:
    """Sizes in units, sections summed, and the long per-chunk list shortened to a count."""
    out = dict(desc)
    out["size"] = _size(int(desc["size"]))
    out["sections"] = f"{len(desc['sections'])} ({_size(sum(desc['sections'].values()))})"
    if isinstance(out.get("chunks"), list):
        out["chunks"] = f"{len(out['chunks'])} (samples per chunk: {min(out['chunks'], default=0)}-" \
                        f"{max(out['chunks'], default=0)})"
    return out


def register(main: click.Group) -> None:
    """Add ``info`` and ``plan`` to ``main``."""

    @main.command("info")
    @click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    def info_cmd(path: Path, as_json: bool) -> None:
        """Describe a he_compute file: kind, scheme, model id, key id, shapes, sizes, security level.

        Example: hec info model.hec
        """
        desc = describe(path)
        if as_json:
            click.echo(json.dumps(desc, indent=2, default=str))
            return
        for line in render(_readable(desc)):
            click.echo(line)
