"""Both example services, driven over HTTP on real local clusters whose readers lag.

Each test runs four times: FastAPI and Flask, on PostgreSQL and on MariaDB. Both apps are
driven through httpx (FastAPI's TestClient is an httpx client; Flask goes through httpx's WSGI
transport, in this very thread, as a threaded server would run it), so one test reads the
same for both. The apps on one engine share a cluster: each test uses its own customers
(FastAPI 31-40, Flask 41-50) and products 30-49, which the library's own tests leave alone.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.exc import DBAPIError

import fastapi_shop.app
import flask_shop
from aurora_access import Database
from aurora_access.demo.models import Customer
from aurora_access.local import LocalCluster
from aurora_access.web import COOKIE_NAME as COMMIT_COOKIE
from aurora_access.web import HEADER_NAME as COMMIT_HEADER
from flask_shop.extensions import db

with warnings.catch_warnings():
    # Starlette 1.x would drive its TestClient with httpx2; httpx (a dev extra) still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

NewClient = Callable[[], httpx.Client]


@pytest.fixture(params=["fastapi", "flask"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_client(shop_db: Database, framework: str) -> Iterator[NewClient]:
    """Makes clients of one app: each client is one browser (its own cookie jar)."""
    clients: list[httpx.Client] = []
    if framework == "fastapi":
        make: NewClient = partial(TestClient, fastapi_shop.app.create_app(shop_db))
    else:  # the WSGI app runs in the calling thread, as a threaded server would run it
        flask_app = flask_shop.create_app(database=shop_db)
        with flask_app.app_context():
            db.create_all()  # the Flask shop's own tables (and its in-memory analytics store)
        wsgi = httpx.WSGITransport(app=flask_app)
        make = partial(httpx.Client, transport=wsgi, base_url="http://testserver")

    def new() -> httpx.Client:
        clients.append(make())
        return clients[-1]

    shop_db.forget_commits()  # start as a fresh request would
    yield new
    for client in clients:
        client.close()


@pytest.fixture
def customer(framework: str) -> Callable[[int], int]:
    """The n-th customer (0-9) of this test's app."""
    return lambda n: (31 if framework == "fastapi" else 41) + n


def bad_input(framework: str) -> int:
    return 422 if framework == "fastapi" else 400


def test_search_and_get_products(new_client: NewClient) -> None:
    client = new_client()
    found = client.get("/products", params={"q": "product 4"})
    assert found.status_code == 200
    names = [p["name"] for p in found.json()]
    assert "Product 4" in names and "Product 45" in names
    assert all("product 4" in name.lower() for name in names)
    assert client.get("/products", params={"q": "%"}).json() == []  # LIKE escaped, not a wildcard
    assert len(client.get("/products", params={"limit": 3}).json()) == 3
    product = client.get("/products/4").json()
    assert product["sku"] == "SKU-00004" and product["in_stock"] > 0
    assert COMMIT_HEADER not in found.headers  # a read commits nothing: no token


def test_checkout_then_history_shows_the_order_every_time(
        new_client: NewClient, shop_db: Database, customer: Callable[[int], int]) -> None:
    """Read-your-writes across requests: the token from checkout, sent back by header or by
    cookie, makes the very next request see the order, although the readers lag (50 ms, 1 s)
    and, on PostgreSQL, the read still runs on a reader. With read-your-writes broken, a
    reader that has not applied the order answers and the order is missing."""
    postgres = shop_db.dialect.name == "postgresql"
    rounds = 20 if postgres else 4
    shopper = new_client()  # keeps the cookie
    api_client = new_client()  # sends the header only: it never gets a cookie
    orders_url = f"/customers/{customer(0)}/orders"
    history_on_writer = 0
    for i in range(rounds):
        added = shopper.post(f"/customers/{customer(0)}/cart/items",
                             json={"product_id": 30, "quantity": 1 + i % 3})
        assert added.status_code == 200 and COMMIT_HEADER in added.headers
        placed = shopper.post(f"/customers/{customer(0)}/checkout")
        assert placed.status_code == 201, placed.text
        order_id, token = placed.json()["order_id"], placed.headers[COMMIT_HEADER]
        assert shopper.cookies[COMMIT_COOKIE] == token
        # the request ended in this thread (Flask) or a worker (FastAPI): no commit outlives it
        assert shop_db.commit_token() is None

        before = shop_db.stats()
        if i % 2:
            history = shopper.get(orders_url)
        else:
            history = api_client.get(orders_url, headers={COMMIT_HEADER: token})
        after = shop_db.stats()
        assert history.status_code == 200
        orders = {o["id"]: o for o in history.json()}
        assert order_id in orders, f"round {i}: the order is missing"
        assert orders[order_id]["lines"] == [
            {"product_id": 30, "quantity": 1 + i % 3, "price_cents": 310}]
        moved = {k: after[k] - before[k] for k in ("reads_on_readers", "reads_on_writer",
                                                   "ryw_waits", "ryw_fallbacks")}
        if postgres:  # the readers catch up within the wait: the history is read there
            assert moved["reads_on_readers"] > 0, moved
            assert moved["reads_on_writer"] == moved["ryw_fallbacks"] == 0, moved
        history_on_writer += moved["reads_on_writer"]

        # another client, without the token, may or may not see it yet: only no error
        assert new_client().get(orders_url).status_code == 200
    if not postgres:  # a 1 s lag, no waiting: the library had to read these on the writer
        assert history_on_writer > 0


def test_checkout_beyond_the_stock_is_409_and_writes_nothing(
        new_client: NewClient, customer: Callable[[int], int]) -> None:
    client = new_client()
    cart_url = f"/customers/{customer(1)}/cart/items"
    stock = client.get("/products/45").json()["in_stock"]
    assert client.post(cart_url, json={"product_id": 44, "quantity": 1}).status_code == 200
    assert client.post(cart_url, json={"product_id": 45, "quantity": stock + 1}).status_code \
        == 200
    refused = client.post(f"/customers/{customer(1)}/checkout")
    assert refused.status_code == 409
    assert refused.json()["product_id"] == 45
    assert COMMIT_HEADER not in refused.headers
    # read with the cart's token (cookie): the writer's state, whatever the lag
    assert client.get("/products/45").json()["in_stock"] == stock
    assert client.get(f"/customers/{customer(1)}/orders").json() == []


def test_the_same_order_id_twice_places_one_order(
        new_client: NewClient, customer: Callable[[int], int]) -> None:
    """A repeated checkout (a retry after a lost response) answers 200 with the first order
    and leaves the cart alone; another customer's order id is a 409."""
    client = new_client()
    order_id = str(uuid.uuid4())
    checkout_url = f"/customers/{customer(2)}/checkout"
    client.post(f"/customers/{customer(2)}/cart/items", json={"product_id": 31, "quantity": 2})
    first = client.post(checkout_url, json={"order_id": order_id})
    assert (first.status_code, first.json()) == (201, {"order_id": order_id, "created": True})
    client.post(f"/customers/{customer(2)}/cart/items", json={"product_id": 32})
    again = client.post(checkout_url, json={"order_id": order_id})
    assert (again.status_code, again.json()) == (200, {"order_id": order_id, "created": False})
    assert COMMIT_HEADER in again.headers  # (the customer lock made a commit to carry)
    orders = client.get(f"/customers/{customer(2)}/orders").json()
    assert [o["id"] for o in orders] == [order_id]
    assert [(line["product_id"], line["quantity"]) for line in orders[0]["lines"]] == [(31, 2)]

    other = new_client()
    other.post(f"/customers/{customer(3)}/cart/items", json={"product_id": 33})
    taken = other.post(f"/customers/{customer(3)}/checkout", json={"order_id": order_id})
    assert taken.status_code == 409
    assert other.get(f"/customers/{customer(3)}/orders").json() == []
    # the cart still holds the item for a checkout with a fresh id
    assert other.post(f"/customers/{customer(3)}/checkout").status_code == 201


def test_unknown_ids_and_bad_input(new_client: NewClient, framework: str,
                                   customer: Callable[[int], int]) -> None:
    client = new_client()
    me = customer(4)
    bad = bad_input(framework)
    assert client.get("/products/999999").status_code == 404
    assert client.get("/customers/999999/orders").status_code == 404
    assert client.post("/customers/999999/cart/items", json={"product_id": 1}).status_code \
        == 404
    assert client.post(f"/customers/{me}/cart/items", json={"product_id": 999999}) \
        .status_code == 404
    assert client.post("/customers/999999/checkout").status_code == 404
    # a number too large for an id: no such customer (Flask) or out of range (FastAPI)
    assert client.get("/customers/99999999999/orders").status_code in (404, 422)
    assert client.get("/products/abc").status_code in (404, 422)

    assert client.get("/products", params={"limit": 0}).status_code == bad
    for body in ({"product_id": 1, "quantity": 0}, {"quantity": 1},
                 {"product_id": "one"}, [1, 2]):
        assert client.post(f"/customers/{me}/cart/items", json=body).status_code == bad, body
    assert client.post(f"/customers/{me}/cart/items", content=b"{",
                       headers={"content-type": "application/json"}).status_code == bad
    assert client.post(f"/customers/{me}/checkout", json={"order_id": "x"}).status_code == bad
    assert client.post(f"/customers/{me}/checkout").status_code == 400  # an empty cart
    nonsense = client.get("/products", headers={COMMIT_HEADER: "nonsense"})
    assert nonsense.status_code == 200  # a token that is not ours is the client's: ignored

    assert client.get(f"/customers/{me}/orders").json() == []  # none of it wrote anything
    assert COMMIT_COOKIE not in client.cookies


def test_refused_requests_leave_no_lock_behind(
        new_client: NewClient, shop_cluster: LocalCluster, customer: Callable[[int], int]) -> None:
    """Each refusal comes after the customer's row was locked (SELECT ... FOR UPDATE) and
    before any write: the rollback must still reach the server, or the pooled connection
    keeps the lock, and the customer's next checkout waits for it (innodb_lock_wait_timeout:
    50 s) or, reusing that connection, runs in its old snapshot."""
    client = new_client()
    me, other = customer(5), customer(6)
    taken = str(uuid.uuid4())
    client.post(f"/customers/{other}/cart/items", json={"product_id": 34})
    assert client.post(f"/customers/{other}/checkout", json={"order_id": taken}).status_code \
        == 201
    refusals: dict[str, tuple[Callable[[], httpx.Response], int]] = {  # request, status
        "unknown product (request session)": (
            lambda: client.post(f"/customers/{me}/cart/items", json={"product_id": 999999}),
            404),
        "empty cart (run_transaction)": (lambda: client.post(f"/customers/{me}/checkout"), 400),
        "another customer's order id (run_transaction)": (
            lambda: client.post(f"/customers/{me}/checkout", json={"order_id": taken}), 409),
    }
    locked = {}
    for what, (send, status) in refusals.items():
        assert send().status_code == status, what
        locked[what] = customer_locked(shop_cluster, me)
    assert locked == dict.fromkeys(refusals, False)


def customer_locked(cluster: LocalCluster, customer_id: int) -> bool:
    """Whether some transaction holds the customer's row lock. Between requests none should:
    one left open on a pooled connection keeps its locks (the customer's next checkout waits
    for them) and, on MariaDB, its old snapshot, for whoever gets the connection next. (Asked
    by taking the lock, NOWAIT: MariaDB's information_schema.innodb_trx does not list every
    open transaction.)"""
    engine = create_engine(cluster.admin_url(cluster.writer.id))
    try:
        with engine.connect() as conn:
            conn.execute(select(Customer.id).where(Customer.id == customer_id)
                         .with_for_update(nowait=True)).all()
            conn.rollback()
        return False
    except DBAPIError:  # 55P03 lock_not_available, MariaDB 1205 lock wait timeout
        return True
    finally:
        engine.dispose()
