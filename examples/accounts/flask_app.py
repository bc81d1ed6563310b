"""The accounts service on Flask (any WSGI server), on aurora-access.

The same endpoints as ``fastapi_app``, each view with its own ``db.session()``; the only
aurora-access line beyond that is the WSGI middleware, which carries the client's last commit
from request to request in a cookie (or the ``X-Commit-Token`` header).

Run it: ``gunicorn --workers 2 --threads 4 'accounts.flask_app:app_from_env()'`` from
``examples/`` (after ``eval "$(aurora-access local up)"`` and the Alembic migration).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, jsonify, request
from sqlmodel import Session, select

from accounts.models import (
    Item,
    ItemIn,
    ItemOut,
    PasswordIn,
    User,
    UserIn,
    UserOut,
    hash_password,
    password_matches,
)
from aurora_access import Database
from aurora_access.web import CommitTokenWSGIMiddleware


def create_app(db: Database[Session]) -> Flask:
    app = Flask(__name__)
    app.wsgi_app = CommitTokenWSGIMiddleware(app.wsgi_app, db=db)  # type: ignore[method-assign]

    def body(model: type[Any]) -> Any:
        return model.model_validate(request.get_json(force=True))

    @app.post("/users")
    def create_user() -> Any:
        data = body(UserIn)
        with db.session() as session:
            user = User(email=data.email, password_hash=hash_password(data.password))
            session.add(user)
            session.commit()
            return jsonify(UserOut.model_validate(user).model_dump()), 201

    @app.get("/users/<int:user_id>")
    def get_user(user_id: int) -> Any:
        with db.session() as session:
            user = session.get(User, user_id) or abort(404)
            return jsonify(UserOut.model_validate(user).model_dump())

    @app.put("/users/<int:user_id>/password")
    def change_password(user_id: int) -> Any:
        data = body(PasswordIn)
        with db.session() as session:
            user = session.get(User, user_id) or abort(404)
            user.password_hash = hash_password(data.password)
        return "", 204

    @app.post("/login")
    def login() -> Any:
        data = body(UserIn)
        with db.session() as session:
            user = session.exec(select(User).where(User.email == data.email)).first()
            if user is None or not password_matches(data.password, user.password_hash):
                abort(401)
            return jsonify({"user_id": user.id})

    @app.post("/users/<int:user_id>/items")
    def add_item(user_id: int) -> Any:
        data = body(ItemIn)
        with db.session() as session:
            if session.get(User, user_id) is None:
                abort(404)
            item = Item(owner_id=user_id, name=data.name)
            session.add(item)
            session.commit()
            return jsonify(ItemOut.model_validate(item).model_dump()), 201

    @app.get("/users/<int:user_id>/items")
    def list_items(user_id: int) -> Any:
        with db.session() as session:
            items = session.exec(select(Item).where(Item.owner_id == user_id)
                                 .order_by(Item.id))  # type: ignore[arg-type]
            return jsonify([ItemOut.model_validate(i).model_dump() for i in items])

    @app.delete("/items/<int:item_id>")
    def delete_item(item_id: int) -> Any:
        with db.session() as session:
            session.delete(session.get(Item, item_id) or abort(404))
        return "", 204

    @app.get("/stats")
    def stats() -> Any:
        """The library's counters in this worker process (where reads went), and its pid."""
        return jsonify({"pid": os.getpid(), **db.stats()})

    return app


def app_from_env() -> Flask:
    """For gunicorn: one Database per worker process, from the AURORA_* variables."""
    return create_app(Database.from_env(session_class=Session))
