"""Flask-SQLAlchemy on aurora-access: the extension pattern, bind keys, the extension's engine.

::

    # extensions.py: made at import time, before any configuration is read
    from flask_sqlalchemy import SQLAlchemy
    from aurora_access.flask import Aurora, AuroraSession

    db = SQLAlchemy(session_options={"class_": AuroraSession})
    aurora = Aurora()

    # app.py: the app factory
    def create_app(config=None):
        app = Flask(__name__)
        app.config.from_mapping(config or {})
        aurora.init_app(app, db)        # instead of db.init_app(app)
        return app

``Aurora.init_app(app, db, database=None)`` gives the app a ``Database`` (the one passed, else
one configured from ``AURORA_*`` keys of ``app.config`` over ``os.environ``), then:

- the extension's default engine (``db.engine``, used by ``db.create_all()``, Flask-Migrate and
  Core) reaches the current writer with the library's logins, TLS and failover knowledge: its
  connections come from the library (a connection to an instance that is no longer the writer
  is replaced when it is checked out), and every commit on it counts for read-your-writes like a
  session's;
- ``db.session`` routes: ``AuroraSession`` (``RoutingSession`` on Flask-SQLAlchemy's own
  ``Session``) finds the app's Database when Flask-SQLAlchemy makes it, in the app context;
  models and tables of another bind (``__bind_key__``) keep going to their own engines;
- the WSGI middleware carries read-your-writes from request to request (cookie or header); a
  request's commits live in its unit of work, which ends with the request, so a worker thread's
  next request does not wait for them. (Forgetting in ``teardown_appcontext`` instead would also
  forget what an app context outside any request committed, such as a test's
  ``db.create_all()``, which the next request must see.)

Nothing private of Flask-SQLAlchemy is touched: ``session_options``, the
``SQLALCHEMY_DATABASE_URI`` and ``SQLALCHEMY_ENGINE_OPTIONS`` settings, ``db.engines`` and
``init_app`` are its documented interface.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import Engine, event, exc
from sqlalchemy.orm import Mapper

from .database import Database
from .errors import AuroraAccessError
from .session import RoutingSession
from .web import CommitTokenWSGIMiddleware

EXTENSION = "aurora_access"


class AuroraSession(RoutingSession, FlaskSession):
    """Flask-SQLAlchemy's session, routed by the Database of the current app.

    Give it as ``SQLAlchemy(session_options={"class_": AuroraSession})``. Flask-SQLAlchemy makes
    sessions in an app context; the app must have gone through ``Aurora.init_app``, or
    AuroraAccessError says so. Statements on models or tables of another bind
    (``__bind_key__``) go to that bind's engine, as Flask-SQLAlchemy sends them; everything else
    is routed (reads to readers, writes to the writer, read-your-writes, failover handling).
    """

    def __init__(self, db: SQLAlchemy, **kwargs: Any) -> None:
        database = current_app.extensions.get(EXTENSION)
        if not isinstance(database, Database):
            raise AuroraAccessError(
                f"the Flask app {current_app.name!r} has no aurora-access Database: call "
                "aurora.init_app(app, db) (aurora_access.flask.Aurora) in its factory")
        super().__init__(router=database._router, db=db, **kwargs)
        self.extension = db

    def routes(self, mapper: Any) -> bool:
        return _bind_key(mapper, None) is None

    def get_bind(self, mapper: Any = None, clause: Any = None, bind: Any = None,
                 **kw: Any) -> Any:
        if bind is not None:
            return bind
        key = _bind_key(mapper, clause)
        if key is not None:  # another bind's model or table: not routed, not Aurora's
            self.last_instance = None
            return self.extension.engines[key]
        return super().get_bind(mapper, clause=clause, **kw)


def _bind_key(mapper: Any, clause: Any) -> str | None:
    """The bind key of a model's or table's metadata (Flask-SQLAlchemy keeps it in
    ``metadata.info["bind_key"]``; None for the default bind, which is Aurora)."""
    table = None
    if mapper is not None:
        inspected = sa.inspect(mapper)
        table = inspected.local_table if isinstance(inspected, Mapper) else None
    elif isinstance(clause, sa.Table):
        table = clause
    elif isinstance(clause, sa.UpdateBase) and isinstance(clause.table, sa.Table):
        table = clause.table
    metadata = getattr(table, "metadata", None)
    key = None if metadata is None else metadata.info.get("bind_key")
    return key if isinstance(key, str) else None


class Aurora:
    """Attaches aurora-access to Flask apps that use Flask-SQLAlchemy (module docstring).

    One ``Aurora`` serves any number of apps (an app factory called once per test): each gets
    its own Database unless one is passed; ``database(app)`` returns it, ``close(app)`` closes
    one this extension made.
    """

    def init_app(self, app: Flask, db: SQLAlchemy, database: Database | None = None) -> None:
        """Give ``app`` a Database and initialise ``db`` (Flask-SQLAlchemy) for it; call this
        instead of ``db.init_app(app)``. ConfigError if the ``AURORA_*`` configuration is
        missing or malformed (no connection is made here)."""
        if database is None:
            environ = {**os.environ, **{key: str(value) for key, value in app.config.items()
                                        if key.startswith("AURORA_") and value is not None}}
            database = Database.from_env(environ)
            app.extensions[f"{EXTENSION}.owned"] = True
        app.extensions[EXTENSION] = database
        writer = _WriterConnections(database)
        app.config["SQLALCHEMY_DATABASE_URI"] = database.url()
        options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options.update(creator=writer.connect, pool_pre_ping=True)
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
        db.init_app(app)
        with app.app_context():
            writer.attach(db.engines[None])
        app.wsgi_app = CommitTokenWSGIMiddleware(app.wsgi_app,  # type: ignore[method-assign]
                                                 db=database)

    @staticmethod
    def database(app: Flask) -> Database:
        """The Database of ``app``; AuroraAccessError if ``init_app`` was not called for it."""
        database = app.extensions.get(EXTENSION)
        if not isinstance(database, Database):
            raise AuroraAccessError(f"the Flask app {app.name!r} has no aurora-access Database")
        return database

    def close(self, app: Flask) -> None:
        """Close the Database this extension made for ``app`` (one passed in stays open)."""
        if app.extensions.pop(f"{EXTENSION}.owned", False):
            self.database(app).close()


class _WriterConnections:
    """The extension's engine's connections: made by the library for the current writer (its
    logins, TLS, timeouts), checked at each checkout against the writer the library knows, and
    their commits counted for read-your-writes."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._hosts: dict[int, str] = {}  # id of a DBAPI connection -> the host it reaches
        self._lock = threading.Lock()

    def connect(self) -> Any:
        writer = self._database.topology().writer
        connection = self._database._pools.connect_detached(writer)
        with self._lock:
            self._hosts[id(connection)] = writer.host
        return connection

    def attach(self, engine: Engine) -> None:
        database = self._database
        inherited: list[object] = []

        def after_fork_in_child() -> None:
            # the child must not use, nor close, the parent's connections (kept, not
            # collected: no goodbye reaches the parent's sessions)
            inherited.append(engine.pool)
            engine.dispose(close=False)
            self._hosts.clear()
            self._lock = threading.Lock()

        os.register_at_fork(after_in_child=after_fork_in_child)

        @event.listens_for(engine, "commit")
        def _committed(connection: Any) -> None:
            database._router.committed()

        @event.listens_for(engine.pool, "checkout")
        def _still_the_writer(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            with self._lock:
                host = self._hosts.get(id(dbapi_connection))
            if host is not None and host != database.topology().writer.host:
                # a connection to a demoted writer would take reads and refuse writes
                raise exc.DisconnectionError(f"{host} is no longer the writer")

        @event.listens_for(engine.pool, "close")
        def _closed(dbapi_connection: Any, record: Any) -> None:
            with self._lock:
                self._hosts.pop(id(dbapi_connection), None)
