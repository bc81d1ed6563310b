"""The accounts service's own tests, on both frameworks and both engines, readers lagging.

Written as any FastAPI/Flask application's tests are, with ``AURORA_RYW_SCOPE=process``
(conftest.py): every pattern here read stale before aurora-access carried commits across
contexts and requests.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session, select

from accounts import fastapi_app, flask_app
from accounts.models import Item, User
from aurora_access import Database

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture(params=["fastapi", "flask"])
def client(request: pytest.FixtureRequest,
           accounts_db: Database[Session]) -> Iterator[httpx.Client]:
    """One browser (its own cookie jar) on one of the two services."""
    if request.param == "fastapi":
        client: httpx.Client = TestClient(fastapi_app.create_app(accounts_db))
    else:
        transport = httpx.WSGITransport(app=flask_app.create_app(accounts_db))
        client = httpx.Client(transport=transport, base_url="http://testserver")
    with client:
        yield client


def new_user(client: httpx.Client, password: str = "first") -> int:  # noqa: S107
    response = client.post("/users", json={"email": f"{uuid.uuid4()}@example.com",
                                           "password": password})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_a_created_user_comes_back_whole(client: httpx.Client) -> None:
    """``session.add(user); session.commit(); return user``: the response reloads the user."""
    for _ in range(10):
        email = f"{uuid.uuid4()}@example.com"
        response = client.post("/users", json={"email": email, "password": "x"})
        assert response.status_code == 201, response.text
        assert response.json()["email"] == email


def test_a_new_password_works_at_the_next_login(client: httpx.Client) -> None:
    user_id = new_user(client)
    email = client.get(f"/users/{user_id}").json()["email"]
    for n in range(5):
        assert client.put(f"/users/{user_id}/password",
                          json={"password": f"new-{n}"}).status_code == 204
        assert client.post("/login", json={"email": email, "password": f"new-{n}"}
                           ).status_code == 200
        assert client.post("/login", json={"email": email, "password": "first"}
                           ).status_code == 401


def test_a_deleted_item_is_gone_from_the_list(client: httpx.Client) -> None:
    user_id = new_user(client)
    ids = [client.post(f"/users/{user_id}/items", json={"name": f"thing {n}"}).json()["id"]
           for n in range(3)]
    for item_id in ids:
        assert client.delete(f"/items/{item_id}").status_code == 204
        listed = [i["id"] for i in client.get(f"/users/{user_id}/items").json()]
        assert item_id not in listed


def test_the_test_reads_what_a_request_wrote(client: httpx.Client,
                                             accounts_db: Database[Session]) -> None:
    user_id = new_user(client, password="secret")  # noqa: S106
    with accounts_db.session() as session:
        user = session.get(User, user_id)
        assert user is not None
        assert session.exec(select(Item).where(Item.owner_id == user_id)).all() == []


def test_a_request_reads_what_the_test_wrote(client: httpx.Client,
                                             accounts_db: Database[Session]) -> None:
    with accounts_db.session() as session:
        user = User(email=f"{uuid.uuid4()}@example.com", password_hash="-")  # noqa: S106
        session.add(user)
        session.commit()
        user_id = user.id
    assert client.get(f"/users/{user_id}").status_code == 200


def test_reads_still_run_on_readers(client: httpx.Client,
                                    accounts_db: Database[Session]) -> None:
    """Read-your-writes must not cost the readers: reads that follow no commit of the
    process, or come after the readers caught up, run there (PostgreSQL; on MariaDB, whose
    readers lag a second, the tests read on the writer at once)."""
    user_id = new_user(client)
    before = accounts_db.stats()
    for _ in range(10):
        assert client.get(f"/users/{user_id}").status_code == 200
    after = accounts_db.stats()
    if accounts_db.settings.engine == "postgresql":
        assert after["reads_on_readers"] - before["reads_on_readers"] >= 10
