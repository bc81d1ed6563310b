"""The accounts service on FastAPI, written as FastAPI and SQLModel teach it, on aurora-access.

What aurora-access asked of the application code, and nothing more:

- ``Database.from_env(session_class=sqlmodel.Session)`` instead of ``create_engine``: sessions
  are SQLModel sessions (``.exec()``) that send reads to readers and writes to the writer;
  making it does no I/O, so importing this module needs no database;
- ``CommitTokenMiddleware``: a request reads everything the client committed before (its
  cookie or header) and everything committed earlier in the same request.

The endpoints are sync: FastAPI runs each in a worker thread under a copy of the request's
context, and serialises what it returns in yet another copy; ``create_user`` returns the object
it just committed, whose expired attributes are then reloaded there: the session remembers its
own commit, so that reload never reads a reader that has not replayed it.

Run it: ``eval "$(aurora-access local up)"``, ``alembic -c accounts/alembic.ini upgrade
head`` and ``uvicorn --factory accounts.fastapi_app:app_from_env`` from ``examples/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
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
from aurora_access.web import CommitTokenMiddleware

router = APIRouter()


def get_session(request: Request) -> Iterator[Session]:
    db: Database[Session] = request.app.state.db
    with db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@router.post("/users", status_code=201, response_model=UserOut)
def create_user(body: UserIn, session: SessionDep) -> User:
    user = User(email=body.email, password_hash=hash_password(body.password))
    session.add(user)
    session.commit()
    return user


@router.get("/users/{user_id}", response_model=UserOut)
def get_user(user_id: int, session: SessionDep) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    return user


@router.put("/users/{user_id}/password", status_code=204)
def change_password(user_id: int, body: PasswordIn, session: SessionDep) -> Response:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(404, "no such user")
    user.password_hash = hash_password(body.password)
    session.commit()
    return Response(status_code=204)


@router.post("/login")
def login(body: UserIn, session: SessionDep) -> dict[str, int]:
    user = session.exec(select(User).where(User.email == body.email)).first()
    if user is None or not password_matches(body.password, user.password_hash):
        raise HTTPException(401, "wrong email or password")
    assert user.id is not None
    return {"user_id": user.id}


@router.post("/users/{user_id}/items", status_code=201, response_model=ItemOut)
def add_item(user_id: int, body: ItemIn, session: SessionDep) -> Item:
    if session.get(User, user_id) is None:
        raise HTTPException(404, "no such user")
    item = Item(owner_id=user_id, name=body.name)
    session.add(item)
    session.commit()
    return item


@router.get("/users/{user_id}/items", response_model=list[ItemOut])
def list_items(user_id: int, session: SessionDep) -> list[Item]:
    return list(session.exec(select(Item).where(Item.owner_id == user_id)
                             .order_by(Item.id)))  # type: ignore[arg-type]


@router.delete("/items/{item_id}", status_code=204)
def delete_item(item_id: int, session: SessionDep) -> Response:
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(404, "no such item")
    session.delete(item)
    session.commit()
    return Response(status_code=204)


@router.get("/stats")
def stats(request: Request) -> dict[str, int]:
    """The library's counters in this worker process (where reads went), and its pid."""
    db: Database[Session] = request.app.state.db
    return {"pid": os.getpid(), **db.stats()}


def create_app(db: Database[Session]) -> FastAPI:
    app = FastAPI(title="aurora-access example: accounts")
    app.state.db = db
    app.add_middleware(CommitTokenMiddleware, db=db)
    app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: one Database per process, from the AURORA_* variables."""
    return create_app(Database.from_env(session_class=Session))
