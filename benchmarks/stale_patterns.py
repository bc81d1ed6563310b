"""Counts the stale reads of issue 10's four patterns, with whichever aurora_access is imported.

Run: .venv/bin/python benchmarks/stale_patterns.py [--rounds 30]
Before issue 10 (the library as it was, from a worktree):
    git worktree add /tmp/before 0aa98fa
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/stale_patterns.py

A FastAPI app with sync endpoints and a session per request (a ``yield`` dependency over
``db.session()``), driven through its TestClient (a browser: it keeps cookies), on a local
cluster per engine (PostgreSQL readers 50 ms behind, MariaDB 1 s). The application code is the
same either way; where the library has ``aurora_access.web`` it gets the middleware, and the
"test" reads with ``AURORA_RYW_SCOPE=process``. Per round:

1. ``POST /accounts``: ``session.add(a); session.commit(); return a`` (FastAPI reloads ``a``);
2. ``PUT /accounts/{id}`` (change the password) then ``POST /login/{id}`` with it;
3. ``DELETE /accounts/{id}`` then ``GET /accounts`` (must not list it);
4. the test's own ``db.session()`` reads an account a request just created.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name
# a type local to make_app

import argparse
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aurora_access import Database, RoutingSession
from aurora_access.local import LocalCluster, free_port

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

try:
    from aurora_access.web import CommitTokenMiddleware
except ImportError:  # the library before issue 10
    CommitTokenMiddleware = None  # type: ignore[assignment, misc]


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "stale_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    password: Mapped[str] = mapped_column(String(200))


class AccountOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    password: str


def make_app(db: Database) -> FastAPI:
    app = FastAPI()
    if CommitTokenMiddleware is not None:
        app.add_middleware(CommitTokenMiddleware, db=db)

    def get_session() -> Iterator[RoutingSession]:
        with db.session() as s:
            yield s

    Dep = Annotated[RoutingSession, Depends(get_session)]

    @app.post("/accounts", response_model=AccountOut)
    def create(s: Dep) -> Any:
        account = Account(password="p0")  # noqa: S106
        s.add(account)
        s.commit()
        return account

    @app.post("/accounts/id")
    def create_id(s: Dep) -> dict[str, int]:
        account = Account(password="p0")  # noqa: S106
        s.add(account)
        s.flush()
        account_id = account.id
        s.commit()
        return {"id": account_id}

    @app.put("/accounts/{account_id}")
    def change(account_id: int, body: dict[str, str], s: Dep) -> dict[str, bool]:
        account = s.get(Account, account_id)
        if account is None:
            raise HTTPException(500, "the account just created was not found")
        account.password = body["password"]
        s.commit()
        return {"ok": True}

    @app.post("/login/{account_id}")
    def login(account_id: int, body: dict[str, str], s: Dep) -> dict[str, bool]:
        account = s.get(Account, account_id)
        if account is None or account.password != body["password"]:
            raise HTTPException(401)
        return {"ok": True}

    @app.delete("/accounts/{account_id}")
    def delete(account_id: int, s: Dep) -> dict[str, bool]:
        account = s.get(Account, account_id)
        if account is None:
            raise HTTPException(500, "the account just created was not found")
        s.delete(account)
        s.commit()
        return {"ok": True}

    @app.get("/accounts")
    def listing(s: Dep) -> list[int]:
        return list(s.scalars(select(Account.id)))

    return app


def count(engine: str, rounds: int) -> Counter[str]:
    lag = 50 if engine == "postgresql" else 1000
    with LocalCluster(engine=engine, readers=2, replica_lag_ms=lag, port=free_port()) as cluster:
        env = cluster.env()
        if CommitTokenMiddleware is not None:
            env["AURORA_RYW_SCOPE"] = "process"
        db = Database.from_env(env)
        Base.metadata.create_all(db.engine("writer"))
        time.sleep(lag / 1000 + 0.5)  # the table on every reader, whatever the library does
        db.forget_commits()
        stale: Counter[str] = Counter()
        client = TestClient(make_app(db), raise_server_exceptions=False)
        for n in range(rounds):
            stale["return obj answered 500"] += client.post("/accounts").status_code != 200
            account_id = client.post("/accounts/id").json()["id"]
            changed = client.put(f"/accounts/{account_id}", json={"password": f"p{n}"})
            stale["read before a change found nothing"] += changed.status_code != 200
            login = client.post(f"/login/{account_id}", json={"password": f"p{n}"})
            stale["login after a change refused"] += login.status_code != 200
            deleted = client.delete(f"/accounts/{account_id}")
            stale["deleted row still listed or not found"] += deleted.status_code != 200 or \
                account_id in client.get("/accounts").json()
            made = client.post("/accounts/id").json()["id"]
            with db.session() as s:
                stale["the test's session misses a request's row"] += s.get(Account, made) is None
        db.close()
        return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    library = "with aurora_access.web" if CommitTokenMiddleware is not None else "before web"
    for engine, rounds in (("postgresql", args.rounds), ("mysql", max(1, args.rounds // 3))):
        stale = count(engine, rounds)
        print(f"{engine} ({library}), {rounds} rounds: " +
              ", ".join(f"{k} {v}" for k, v in stale.items()), flush=True)


if __name__ == "__main__":
    main()
