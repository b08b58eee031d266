"""The fleet dashboard: server-rendered pages under /dashboard/ on the operator's HTTPS port."""

from __future__ import annotations

import logging

from aiohttp import web

PREFIX = "/dashboard"


def mount(app: web.Application) -> None:
    """Add the dashboard to the operator's application (``server.app.make_app`` calls this)."""
    try:
        from elemental_operator.dashboard.app import dashboard_app
    except ImportError as exc:  # jinja2 missing (an operator image without python3-jinja2)
        logging.getLogger(__name__).warning("dashboard not served: %s", exc)
        return
    from elemental_operator.server.app import ADMIN_KEY, CTX_KEY, STATE_KEY

    app.add_subapp(PREFIX, dashboard_app(app[CTX_KEY], app[ADMIN_KEY], app[STATE_KEY]))
