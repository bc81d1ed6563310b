"""The example shop on Flask and Flask-SQLAlchemy, with aurora-access (see app.py to run it).

``create_app`` is the app factory: the extensions are made at import (``extensions.py``) and
attached here, as Flask applications do; tests call it once per test with a Database of their
own cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from aurora_access import Database
from flask_shop.extensions import aurora, db
from flask_shop.views import bp


def create_app(config: Mapping[str, Any] | None = None,
               database: Database | None = None) -> Flask:
    """The shop. ``config``: Flask settings (``AURORA_*`` keys configure aurora-access, over the
    environment; ``SQLALCHEMY_BINDS["analytics"]`` places the page views, an in-memory SQLite
    database by default; ``FLASK_*`` variables of the environment set them too).
    ``database``: an aurora-access Database to use (it stays the
    caller's), else one is made from the configuration (``aurora.close(app)`` closes it)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_BINDS"] = {"analytics": "sqlite://"}
    app.config.from_prefixed_env()  # FLASK_SQLALCHEMY_BINDS='{"analytics": "sqlite:///..."}'
    app.config.from_mapping(config or {})
    aurora.init_app(app, db, database)  # instead of db.init_app(app)
    app.register_blueprint(bp)
    return app
