"""Flask-SQLAlchemy's ``db.session`` routed by aurora-access (the README's recipe): the
extension's session class is the Database's ``session_class`` built on Flask-SQLAlchemy's own
Session; the WSGI middleware carries commits from request to request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask_sqlalchemy
import httpx
import pytest
from flask import Flask, jsonify, request
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from aurora_access import Database, RoutingSession
from aurora_access.local import LocalCluster
from aurora_access.web import CommitTokenWSGIMiddleware
from engines import settle, where


@pytest.fixture(scope="module")
def aurora(engine_cluster: LocalCluster) -> Iterator[Database[flask_sqlalchemy.session.Session]]:
    database = Database.from_env(engine_cluster.env(),
                                 session_class=flask_sqlalchemy.session.Session)
    yield database
    database.close()


@pytest.fixture(scope="module")
def app(aurora: Database[flask_sqlalchemy.session.Session]) -> tuple[Flask, Any]:
    db = flask_sqlalchemy.SQLAlchemy(session_options={"class_": aurora.session_class})

    class Account(db.Model):  # type: ignore[name-defined, misc]
        __tablename__ = "fsa_account"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(String(200))

    app = Flask(__name__)
    # Flask-SQLAlchemy wants a URL; sessions never use its engine, aurora-access routes them
    app.config["SQLALCHEMY_DATABASE_URI"] = aurora.url()
    db.init_app(app)
    app.wsgi_app = CommitTokenWSGIMiddleware(app.wsgi_app, db=aurora)  # type: ignore[method-assign]
    db.metadata.create_all(aurora.engine("writer"))
    settle(aurora)  # the table is on every reader, and this thread need not wait for it
    aurora.forget_commits()

    @app.post("/accounts")
    def create() -> Any:
        account = Account(email=request.get_json()["email"])
        db.session.add(account)
        db.session.commit()
        return jsonify({"id": account.id}), 201

    @app.put("/accounts/<int:account_id>")
    def rename(account_id: int) -> Any:
        db.get_or_404(Account, account_id).email = request.get_json()["email"]
        db.session.commit()
        return jsonify({"ok": True})

    @app.get("/accounts/<int:account_id>")
    def read(account_id: int) -> Any:
        account = db.get_or_404(Account, account_id)
        on_reader = where(db.session())[0]

        return jsonify({"email": account.email, "on_reader": on_reader})

    return app, db


def test_flask_sqlalchemy_sessions_route_and_read_their_writes(
        app: tuple[Flask, Any], aurora: Database[flask_sqlalchemy.session.Session]) -> None:
    flask_app, db = app
    with flask_app.app_context():
        assert isinstance(db.session(), RoutingSession)
        assert isinstance(db.session(), flask_sqlalchemy.session.Session)
    client = httpx.Client(transport=httpx.WSGITransport(app=flask_app),
                          base_url="http://testserver")
    account_id = client.post("/accounts", json={"email": "a@example.com"}).json()["id"]
    rounds = 20 if aurora.settings.engine == "postgresql" else 4
    for n in range(rounds):
        assert client.put(f"/accounts/{account_id}", json={"email": f"{n}@example.com"}
                          ).status_code == 200
        assert client.get(f"/accounts/{account_id}").json()["email"] == f"{n}@example.com"
    settle(aurora)
    client.cookies.clear()  # another browser: its reads spread over the readers
    assert client.get(f"/accounts/{account_id}").json()["on_reader"] is True
