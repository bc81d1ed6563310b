"""The Flask shop as a Flask-SQLAlchemy application's own tests would drive it (issue 11): an
app from the factory per test, ``db.create_all()`` in the setup, Flask's test client (a
browser: it keeps cookies), the test reading and writing the database itself in app contexts.
Both engines, readers lagging (PostgreSQL 50 ms, MariaDB 1 s), and both read-your-writes
scopes: ``process`` (what an application's test suite should use: every pattern passes) and
``context`` (a browser's cookie only: the request-to-request patterns pass)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

import flask_shop
from aurora_access import AuroraAccessError, Database
from aurora_access.demo.models import Customer
from aurora_access.flask import AuroraSession
from aurora_access.local import LocalCluster
from flask_shop.extensions import aurora, db
from flask_shop.models import ApiKey, Credential, ProductView

SCOPES = ["process", "context"]


@pytest.fixture(scope="module", params=SCOPES)
def scoped_db(request: pytest.FixtureRequest, shop_cluster: LocalCluster,
              shop_db: Database) -> Iterator[Database]:
    """A Database on the shop's cluster (its demo data made by ``shop_db``) in one scope."""
    wait = "2000" if shop_cluster.engine == "postgresql" else "0"
    database = Database.from_env({**shop_cluster.env(), "AURORA_RYW_SCOPE": request.param,
                                  "AURORA_RYW_WAIT_MS": wait})
    yield database
    database.close()


@pytest.fixture
def app(scoped_db: Database, tmp_path: Path) -> Iterator[Flask]:
    """A fresh app, its tables made anew in the setup: through the extension's engine, whose
    commits the first request must see although the readers lag."""
    app = flask_shop.create_app({"TESTING": True, "SQLALCHEMY_BINDS": {
        "analytics": f"sqlite:///{tmp_path / 'analytics.db'}"}}, database=scoped_db)
    with app.app_context():
        db.drop_all()
        db.create_all()
    yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def process_scope(database: Database) -> bool:
    return database.settings.ryw_scope == "process"


def sign_up(client: FlaskClient, password: str = "first") -> tuple[int, str]:  # noqa: S107
    email = f"{uuid.uuid4()}@example.com"
    response = client.post("/customers", json={"email": email, "name": "N", "password": password})
    assert response.status_code == 201, response.get_data(as_text=True)
    return int(response.get_json()["id"]), email


def log_in(client: FlaskClient, email: str, password: str) -> Any:
    return client.post("/login", json={"email": email, "password": password})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_first_request_sees_the_tables_the_setup_made(client: FlaskClient) -> None:
    """The fixture dropped and made the tables a moment ago, through ``db.engine``: read on a
    reader that has not replayed that, the API key look-up fails ("relation does not exist",
    a 500) instead of refusing the key."""
    assert client.get("/me", headers=bearer("no-such-key")).status_code == 401
    _, email = sign_up(client)
    assert log_in(client, email, "first").status_code == 200


def test_sign_up_then_log_in_at_once(client: FlaskClient, scoped_db: Database) -> None:
    for _ in range(5 if scoped_db.settings.engine == "postgresql" else 2):
        _, email = sign_up(client)
        response = log_in(client, email, "first")
        assert response.status_code == 200, response.get_data(as_text=True)
        key = response.get_json()["api_key"]
        assert client.get("/me", headers=bearer(key)).get_json()["email"] == email


def test_a_new_password_works_at_the_next_login(client: FlaskClient) -> None:
    _, email = sign_up(client)
    key = log_in(client, email, "first").get_json()["api_key"]
    for n in range(3):
        assert client.put("/me/password", json={"password": f"p{n}"},
                          headers=bearer(key)).status_code == 204
        assert log_in(client, email, f"p{n}").status_code == 200
        assert log_in(client, email, "first").status_code == 401


def test_a_deleted_key_is_refused_at_once(client: FlaskClient) -> None:
    """Delete, then read: 401, not the 200 a reader that has not replayed the delete gives."""
    _, email = sign_up(client)
    key = log_in(client, email, "first").get_json()["api_key"]
    assert client.get("/me", headers=bearer(key)).status_code == 200
    assert client.post("/logout", headers=bearer(key)).status_code == 204
    assert client.get("/me", headers=bearer(key)).status_code == 401


def test_a_stale_read_leads_to_no_wrong_write(client: FlaskClient) -> None:
    """A list deleted by the last request: read stale it would be found, and the item's
    INSERT would break its foreign key on the writer (a 500); read fresh it is a 404."""
    _, email = sign_up(client)
    key = log_in(client, email, "first").get_json()["api_key"]
    for _ in range(3):
        list_id = client.post("/me/lists", json={"name": "gifts"},
                              headers=bearer(key)).get_json()["id"]
        assert client.post(f"/me/lists/{list_id}/items", json={"product_id": 3},
                           headers=bearer(key)).status_code == 201
        assert client.delete(f"/me/lists/{list_id}", headers=bearer(key)).status_code == 204
        added = client.post(f"/me/lists/{list_id}/items", json={"product_id": 4},
                            headers=bearer(key))
        assert added.status_code == 404, added.get_data(as_text=True)


def test_the_test_reads_what_a_request_wrote(client: FlaskClient, app: Flask,
                                             scoped_db: Database) -> None:
    if not process_scope(scoped_db):
        pytest.skip("a test's own reads see a request's writes in process scope")
    customer_id, email = sign_up(client)
    with app.app_context():
        customer = db.session.get(Customer, customer_id)
        assert customer is not None and customer.email == email
        assert db.session.get(Credential, customer_id) is not None


def test_a_request_reads_what_the_test_wrote(client: FlaskClient, app: Flask,
                                             scoped_db: Database) -> None:
    if not process_scope(scoped_db):
        pytest.skip("a request sees the test's own writes in process scope")
    key = uuid.uuid4().hex
    with app.app_context():
        customer = Customer(email=f"{key}@example.com", name="Made by the test")
        db.session.add(customer)
        db.session.flush()
        db.session.add(ApiKey(key=key, customer_id=customer.id))
        db.session.commit()
    me = client.get("/me", headers=bearer(key))
    assert me.status_code == 200 and me.get_json()["name"] == "Made by the test"


def test_another_bind_is_left_to_its_own_engine(client: FlaskClient, app: Flask,
                                                tmp_path: Path, scoped_db: Database) -> None:
    """Page views go to the analytics bind (SQLite here), never to Aurora; the product
    itself is read from Aurora."""
    for _ in range(3):
        assert client.get("/products/7").status_code == 200
    assert client.get("/products/7/views").get_json()["views"] == 3
    with sa.create_engine(f"sqlite:///{tmp_path / 'analytics.db'}").connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM product_views")).scalar() == 3
    with scoped_db.engine("writer").connect() as conn:
        assert not sa.inspect(conn).has_table(ProductView.__tablename__)
    with app.app_context():
        session = db.session()
        session.scalar(select(sa.func.count()).select_from(ProductView))
        assert session.last_instance is None  # not an Aurora instance


def test_reads_still_run_on_readers(client: FlaskClient, scoped_db: Database) -> None:
    before = scoped_db.stats()
    for product in range(10, 20):
        assert client.get(f"/products/{product}").status_code == 200
    after = scoped_db.stats()
    if scoped_db.settings.engine == "postgresql":  # MariaDB: read on the writer at once
        assert after["reads_on_readers"] - before["reads_on_readers"] >= 5


def test_a_request_leaves_no_commit_behind_in_its_thread(client: FlaskClient,
                                                         scoped_db: Database) -> None:
    """Flask runs a request in the thread that serves the next one: its commits must not
    make the next request, from anyone, wait. (What the setup committed outside any request,
    ``db.create_all()``, does stay with the thread, as it should: the next request reads the
    new tables.)"""
    setup = scoped_db._router.commits.current()
    assert setup is not None
    sign_up(client)
    assert scoped_db._router.commits.current() is setup


def test_apps_from_the_factory_get_their_own_database(shop_cluster: LocalCluster) -> None:
    """AURORA_* settings in each app's config (over the environment): a Database each."""
    first = flask_shop.create_app(shop_cluster.env())
    second = flask_shop.create_app(shop_cluster.env())
    try:
        assert aurora.database(first) is not aurora.database(second)
        for app in (first, second):
            found = app.test_client().get("/products", query_string={"q": "Product 5"})
            assert found.status_code == 200 and found.get_json()
    finally:
        aurora.close(first)
        aurora.close(second)


def test_a_session_outside_an_aurora_app_says_what_is_missing() -> None:
    bare = Flask("bare")
    with bare.app_context(), pytest.raises(AuroraAccessError, match=r"aurora\.init_app"):
        AuroraSession(db=db)
