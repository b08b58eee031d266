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
ROW_CACHE = 50_000  # rendered machine rows kept (≈ 1.3 KiB each)


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
        self.env.globals.update(
            prefix=prefix,
            static_version=_static_version(),
            condition=present.condition,
            condition_css=present.condition_css,
        )
        self._row = self.env.get_template("_row.html")
        self._rows: dict[tuple[str, str], tuple[tuple[str, str], str]] = {}

    def page(self, template: str, **ctx: Any) -> str:
        return self.env.get_template(template).render(**ctx)

    def row(self, inv: dict[str, Any], secret: dict[str, Any] | None) -> str:
        return self.row_of(present.machine_row(inv, secret), inv, secret)

    def row_of(self, row: present.MachineRow, inv: dict[str, Any], secret: dict[str, Any] | None) -> str:
        """The row's HTML, rendered once per (inventory, plan Secret) version: the Machines page
        and the live stream reuse it, so a page of 1,000 machines renders only what changed."""
        key = (row.namespace, row.name)
        version = (
            str(inv["metadata"].get("resourceVersion", "")),
            str(((secret or {}).get("metadata") or {}).get("resourceVersion", "")),
        )
        hit = self._rows.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        html = self._row.render(row=row)
        if len(self._rows) >= ROW_CACHE:
            self._rows.clear()  # more machines than the bound: start over rather than grow
        self._rows[key] = (version, html)
        return html
