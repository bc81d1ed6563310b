"""The extensions, made at import time, before any configuration is read (the Flask way):
Flask-SQLAlchemy with aurora-access's session class, and aurora-access itself. The app factory
(``flask_shop.create_app``) attaches them to an app."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy

from aurora_access.flask import Aurora, AuroraSession

db = SQLAlchemy(session_options={"class_": AuroraSession})
aurora = Aurora()
