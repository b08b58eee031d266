"""Jinja2 rendering of the dashboard's pages and of one machine row (the live stream sends rows).

Templates and static files are package data (no CDN, no build step): ``templates/`` and
``static/`` beside this module, installed with the wheel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2

from elemental_operator.dashboard import present

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"


def _static_version() -> str:
    # Cache-busting query for the static files: their content hash, computed once per process.
    h = hashlib.sha256()
    for f in sorted(STATIC.iterdir()):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


class Renderer:
    def __init__(self, prefix: str) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.ChainableUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(prefix=prefix, static_version=_static_version(), condition=present.condition)
        self._row = self.env.get_template("_row.html")

    def page(self, template: str, **ctx: Any) -> str:
        return self.env.get_template(template).render(**ctx)

    def row(self, inv: dict[str, Any], secret: dict[str, Any] | None) -> str:
        return self._row.render(row=present.machine_row(inv, secret))
