"""The async shop (``async_shop``), driven over HTTP on real local clusters whose readers lag.

Every test runs on PostgreSQL (readers 50 ms behind) and MariaDB (1 s behind), each in an event
loop of its own (``asyncio.run``) with an ``AsyncDatabase`` made and closed in that loop: its
engines belong to the loop that made them. Clients are ``httpx.AsyncClient``s on the app through
``ServerTransport``, one cookie jar each. The demo data is ``shop_db``'s; these tests use the
demo's customers 15-30 and products 20-29, which no other test writes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import httpx
import pytest

from async_shop.app import create_app
from aurora_access import (
    AsyncDatabase,
    CommitOutcomeUnknown,
    Database,
    NoWriterAvailable,
    TransactionReplayRequired,
)
from aurora_access.web import COOKIE_NAME as COMMIT_COOKIE
from aurora_access.web import HEADER_NAME as COMMIT_HEADER

T = TypeVar("T")
CUSTOMERS = range(15, 31)
PRODUCTS = range(20, 30)
MOVED = ("reads_on_readers", "reads_on_writer", "ryw_waits", "ryw_fallbacks")


class ServerTransport(httpx.ASGITransport):
    """Runs each request in a task of its own, as an ASGI server does. ``ASGITransport`` runs
    the app in the caller's task: what a request leaves in context variables (its commit, for
    the reads after it) would stay with the test and reach the next request of any client,
    which would hide a missing ``CommitTokenMiddleware``."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await asyncio.create_task(super().handle_async_request(request))


class Shop:
    """The app on an AsyncDatabase of the test's loop; ``client()`` is a new browser."""

    def __init__(self, db: AsyncDatabase, clients: AsyncExitStack) -> None:
        self.db = db
        self.app = create_app(db)
        self._clients = clients

    def client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=ServerTransport(app=self.app),
                                   base_url="http://testserver")
        self._clients.push_async_callback(client.aclose)
        return client

    def moved(self, before: dict[str, int]) -> dict[str, int]:
        """How the routing counters moved since ``before`` (a ``db.stats()``)."""
        after = self.db.stats()
        return {name: after[name] - before[name] for name in MOVED}


RunShop = Callable[[Callable[[Shop], Awaitable[Any]]], Any]


@pytest.fixture
def run_shop(shop_env: dict[str, str], shop_db: Database) -> RunShop:
    """``run_shop(work)``: ``await work(shop)`` in a new event loop, the shop's AsyncDatabase
    made and closed there (``shop_db``: the demo data, already on every reader)."""

    def run(work: Callable[[Shop], Awaitable[T]]) -> T:
        async def main() -> T:
            async with AsyncDatabase.from_env(shop_env) as db, AsyncExitStack() as clients:
                return await work(Shop(db, clients))

        return asyncio.run(main())

    return run


async def buy(client: httpx.AsyncClient, customer: int, product: int, quantity: int) -> str:
    """Add to the cart and check out; the new order's id."""
    added = await client.post(f"/customers/{customer}/cart/items",
                              json={"product_id": product, "quantity": quantity})
    assert added.status_code == 200, added.text
    placed = await client.post(f"/customers/{customer}/checkout")
    assert placed.status_code == 201, placed.text
    return str(placed.json()["order_id"])


async def order_ids(client: httpx.AsyncClient, customer: int, **kwargs: Any) -> list[str]:
    history = await client.get(f"/customers/{customer}/orders", params={"limit": 100},
                               **kwargs)
    assert history.status_code == 200, history.text
    return [order["id"] for order in history.json()]


def test_the_next_request_sees_the_order(run_shop: RunShop, shop_env: dict[str, str]) -> None:
    """Checkout, then the order history in the very next request, 20 rounds: the order is
    there every time (token by cookie, or by header in alternate rounds), although the readers
    lag; on PostgreSQL the history is still read on a reader (it waits the few ms for one)."""
    postgres = shop_env["AURORA_ENGINE"] == "postgresql"
    customer, product = CUSTOMERS[0], PRODUCTS[0]

    async def work(shop: Shop) -> None:
        shopper, api_client = shop.client(), shop.client()  # api_client: the header only
        stale, history_on_writer = [], 0
        for i in range(20):
            added = await shopper.post(f"/customers/{customer}/cart/items",
                                       json={"product_id": product, "quantity": 1 + i % 3})
            assert added.status_code == 200
            placed = await shopper.post(f"/customers/{customer}/checkout")
            assert placed.status_code == 201, placed.text
            order_id, token = placed.json()["order_id"], placed.headers[COMMIT_HEADER]
            assert shopper.cookies[COMMIT_COOKIE] == token

            before = shop.db.stats()
            if i % 2:
                history = await shopper.get(f"/customers/{customer}/orders")
            else:
                history = await api_client.get(f"/customers/{customer}/orders",
                                               headers={COMMIT_HEADER: token})
            moved = shop.moved(before)
            assert history.status_code == 200
            orders = {o["id"]: o for o in history.json()}
            if order_id not in orders:
                stale.append(i)
                continue
            assert orders[order_id]["lines"] == [
                {"product_id": product, "quantity": 1 + i % 3, "price_cents": 100 + 7 * product}]
            if postgres:
                assert moved["reads_on_readers"] > 0, moved
                assert moved["reads_on_writer"] == moved["ryw_fallbacks"] == 0, moved
            history_on_writer += moved["reads_on_writer"]
        assert stale == [], f"rounds whose history missed the order just placed: {stale}"
        if not postgres:  # a 1 s lag and no waiting: the library read these on the writer
            assert history_on_writer > 0

    run_shop(work)


def test_concurrent_clients_read_their_own_orders(run_shop: RunShop,
                                                  shop_env: dict[str, str]) -> None:
    """16 browsers at once on one event loop, each buying and then reading its history, 5
    rounds: none misses its order; on PostgreSQL the histories are read on readers."""

    async def browse(shop: Shop, n: int) -> list[int]:
        client, customer = shop.client(), CUSTOMERS[n]
        stale = []
        for i in range(5):
            order_id = await buy(client, customer, PRODUCTS[n % len(PRODUCTS)], 1)
            if order_id not in await order_ids(client, customer):
                stale.append(i)
        return stale

    async def work(shop: Shop) -> tuple[list[list[int]], dict[str, int]]:
        stale = await asyncio.gather(*(browse(shop, n) for n in range(len(CUSTOMERS))))
        return stale, shop.db.stats()

    stale, stats = run_shop(work)
    assert stale == [[]] * len(CUSTOMERS), "rounds that missed the order, by browser"
    if shop_env["AURORA_ENGINE"] == "postgresql":
        assert stats["reads_on_readers"] > 0 and stats["ryw_fallbacks"] == 0, stats


def test_the_same_order_id_places_one_order(run_shop: RunShop) -> None:
    """A checkout sent again with its order id (a retry after a lost response), after the
    first or at the same time, answers with the first order and places no other; another
    customer's order id is a 409."""
    customer, other = CUSTOMERS[1], CUSTOMERS[2]

    async def work(shop: Shop) -> None:
        client = shop.client()
        checkout = f"/customers/{customer}/checkout"
        await client.post(f"/customers/{customer}/cart/items",
                          json={"product_id": PRODUCTS[1], "quantity": 2})
        order_id = str(uuid.uuid4())
        first = await client.post(checkout, json={"order_id": order_id})
        assert (first.status_code, first.json()) == (201, {"order_id": order_id,
                                                           "created": True})
        await client.post(f"/customers/{customer}/cart/items", json={"product_id": PRODUCTS[2]})
        again = await client.post(checkout, json={"order_id": order_id})
        assert (again.status_code, again.json()) == (200, {"order_id": order_id,
                                                           "created": False})
        assert (await order_ids(client, customer)).count(order_id) == 1

        # both at once: the customer's row lock makes the second wait, then find the first
        together = str(uuid.uuid4())
        answers = await asyncio.gather(*(client.post(checkout, json={"order_id": together})
                                         for _ in range(2)))
        assert sorted((a.status_code, a.json()["created"]) for a in answers) == [
            (200, False), (201, True)]
        assert (await order_ids(client, customer)).count(together) == 1

        await client.post(f"/customers/{other}/cart/items", json={"product_id": PRODUCTS[3]})
        taken = await client.post(f"/customers/{other}/checkout", json={"order_id": order_id})
        assert taken.status_code == 409
        assert order_id not in await order_ids(client, other)

    run_shop(work)


def test_a_commit_answers_with_its_token(run_shop: RunShop) -> None:
    """A request that committed answers with the token in the cookie and the header; one that
    committed nothing (a read, a refused write) with neither."""
    customer = CUSTOMERS[3]

    async def work(shop: Shop) -> None:
        client = shop.client()
        added = await client.post(f"/customers/{customer}/cart/items",
                                  json={"product_id": PRODUCTS[4]})
        assert added.status_code == 200
        token = added.headers[COMMIT_HEADER]
        assert token.startswith("aurora1:") and added.cookies[COMMIT_COOKIE] == token
        assert "httponly" in added.headers["set-cookie"].lower()
        placed = await client.post(f"/customers/{customer}/checkout")
        assert placed.status_code == 201
        assert placed.headers[COMMIT_HEADER] == placed.cookies[COMMIT_COOKIE] != token

        read = await client.get(f"/products/{PRODUCTS[4]}")
        refused = await client.post(f"/customers/{customer}/cart/items",
                                    json={"product_id": 999_999})
        empty = await client.post(f"/customers/{customer}/checkout")
        assert (read.status_code, refused.status_code, empty.status_code) == (200, 404, 400)
        for response in (read, refused, empty):
            assert COMMIT_HEADER not in response.headers
            assert "set-cookie" not in response.headers

    run_shop(work)


def test_a_client_without_the_token_reads_on_a_reader_at_once(run_shop: RunShop) -> None:
    """Right after a client's commit, its own next read must see it (it waits for a reader, or
    reads on the writer), while a fresh client's read, which carries no token, goes to a
    reader without waiting: one client's commit does not slow the others down."""
    customer = CUSTOMERS[4]

    async def work(shop: Shop) -> tuple[dict[str, int], dict[str, int]]:
        shopper, fresh = shop.client(), shop.client()
        order_id = await buy(shopper, customer, PRODUCTS[5], 1)
        before = shop.db.stats()
        assert order_id in await order_ids(shopper, customer)
        own = shop.moved(before)
        before = shop.db.stats()
        await order_ids(fresh, customer)  # the order may or may not be there yet
        assert (await fresh.get(f"/products/{PRODUCTS[5]}")).status_code == 200
        return own, shop.moved(before)

    own, others = run_shop(work)
    assert own["ryw_waits"] > 0, own  # the shopper's read had a commit to wait for
    assert others["ryw_waits"] == others["ryw_fallbacks"] == others["reads_on_writer"] == 0, \
        others
    assert others["reads_on_readers"] > 0, others


@pytest.mark.parametrize(("error", "status"), [
    pytest.param(TransactionReplayRequired("rolled back by a failover"), 503, id="replay"),
    pytest.param(NoWriterAvailable("no writer within 30 s"), 503, id="no-writer"),
    pytest.param(CommitOutcomeUnknown("the COMMIT was cut off"), 500, id="outcome-unknown"),
])
def test_failover_errors_answer_what_the_client_may_do(
        run_shop: RunShop, monkeypatch: pytest.MonkeyPatch, error: Exception,
        status: int) -> None:
    """Nothing committed (503): send it again after Retry-After. A COMMIT whose outcome is
    unknown (500): the answer says so; only the client can tell whether to send it again."""

    async def work(shop: Shop) -> httpx.Response:
        async def failing(*args: object, **kwargs: object) -> None:
            raise error

        monkeypatch.setattr(shop.db, "run_transaction", failing)
        return await shop.client().post(f"/customers/{CUSTOMERS[5]}/checkout")

    response = run_shop(work)
    assert response.status_code == status
    assert response.json()["detail"] == str(error)
    if status == 503:
        assert response.headers["retry-after"] == "1"
    else:
        assert response.json()["outcome"] == "unknown" and "retry-after" not in response.headers
