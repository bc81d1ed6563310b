"""The demo's shop traffic: what one shopper (a thread, or an asyncio task) does and records.

A shopper browses (two product pages and a search), adds to its cart, and every other round
checks out and reads its order history right away: the read that read-your-writes must make
fresh. Writes go through ``run_transaction``, as a service should write: a failover replays
them instead of failing the request. Each shopper has customers of its own, so shoppers never
queue on each other's rows and a missing order can only be a stale read.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..async_database import AsyncDatabase
from ..database import Database
from ..errors import CommitOutcomeUnknown, FailoverError
from .models import Cart, CartItem, Customer, Order, Product, Stock
from .shop import advance_id_sequences, place_order

BATCH = 5000
T = TypeVar("T")


def load_catalog(engine: Engine, products: int, customers: int, stock_each: int) -> None:
    """Products with stock and customers, in batches of multi-row inserts (the ORM's one
    object at a time would take a minute for the case study's 500,000 products)."""
    with engine.begin() as conn:
        for first in range(1, products + 1, BATCH):
            ids = range(first, min(first + BATCH, products + 1))
            conn.execute(insert(Product), [
                {"id": i, "sku": f"SKU-{i:07d}", "name": f"Product {i}",
                 "price_cents": 100 + 7 * (i % 1000)} for i in ids])
            conn.execute(insert(Stock), [{"product_id": i, "quantity": stock_each} for i in ids])
        for first in range(1, customers + 1, BATCH):
            conn.execute(insert(Customer), [
                {"id": i, "email": f"customer{i}@example.com", "name": f"Customer {i}"}
                for i in range(first, min(first + BATCH, customers + 1))])
        advance_id_sequences(conn)


@dataclass
class Tally:
    """What the shoppers saw, shared by all of them (append under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, int] = field(default_factory=dict)  # order id -> items
    unknown: dict[str, int] = field(default_factory=dict)  # CommitOutcomeUnknown
    failed: dict[str, int] = field(default_factory=dict)  # documented errors, by name
    attempted: set[str] = field(default_factory=set)  # every order id a checkout tried
    stale_reads: int = 0
    # (finished at, seconds it took, kind) of every operation
    latencies: list[tuple[float, float, str]] = field(default_factory=list)
    # (started at, finished at) of every acknowledged checkout
    checkouts: list[tuple[float, float]] = field(default_factory=list)

    def timed(self, kind: str, began: float) -> None:
        now = time.monotonic()
        with self.lock:
            self.latencies.append((now, now - began, kind))


class _Shopping:
    """What a shopper does and records, whatever runs it: a thread (``Shopper``) or an
    asyncio task (``AsyncShopper``), which differ only in how they wait for the database.
    ``customers`` are this shopper's alone."""

    def __init__(self, tally: Tally, products: int, customers: list[int], seed: int) -> None:
        self.tally = tally
        self.products = products
        self.customers = customers
        self.rng = random.Random(seed)  # noqa: S311 - traffic, not secrets
        self.turn = 0

    def next_visit(self) -> tuple[int, bool]:
        """The customer of the next round, and whether it checks out (every other round)."""
        self.turn += 1
        return self.customers[(self.turn - 1) % len(self.customers)], self.turn % 2 == 0

    def browse(self) -> Callable[[Session], object]:
        product = self._product()
        return lambda s: s.get(Product, product)

    def search(self) -> Callable[[Session], object]:
        prefix = f"Product {self.rng.randint(1, 99)}"
        return lambda s: s.scalars(
            select(Product).where(Product.name.like(prefix + "%")).limit(20)).all()

    def cart(self, customer: int) -> Callable[[Session], None]:
        product, quantity = self._product(), self.rng.randint(1, 3)
        return lambda s: add_to_cart(s, customer, product, quantity)

    def new_order(self) -> str:
        order_id = str(uuid.uuid4())
        with self.tally.lock:
            self.tally.attempted.add(order_id)
        return order_id

    def abandoned(self, error: FailoverError) -> None:
        """A documented error ended the round: abandoned, not lost."""
        with self.tally.lock:
            name = type(error).__name__
            self.tally.failed[name] = self.tally.failed.get(name, 0) + 1

    def checked_out(self, order_id: str, items: dict[str, int], began: float,
                    error: CommitOutcomeUnknown | None) -> bool:
        """Record a checkout's end; True if it was acknowledged."""
        finished = time.monotonic()
        with self.tally.lock:
            if error is not None:
                self.tally.unknown[order_id] = items.get("count", 0)
                return False
            self.tally.acknowledged[order_id] = items.get("count", 0)
            self.tally.checkouts.append((began, finished))
        self.tally.timed("checkout", began)
        return True

    def history(self, customer: int, order_id: str) -> Callable[[Session], None]:
        """The order history right after the checkout: stale if the order is missing."""

        def read(s: Session) -> None:
            recent = set(s.scalars(select(Order.id).where(Order.customer_id == customer)))
            if order_id not in recent:
                with self.tally.lock:
                    self.tally.stale_reads += 1

        return read

    def _product(self) -> int:
        return self.rng.randint(1, self.products)


class Shopper(_Shopping):
    """One thread of traffic."""

    def __init__(self, db: Database, tally: Tally, products: int, customers: list[int],
                 seed: int) -> None:
        super().__init__(tally, products, customers, seed)
        self.db = db

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            customer, checkout_too = self.next_visit()
            try:
                self._round(customer, checkout_too)
            except FailoverError as exc:
                self.abandoned(exc)
            finally:
                self.db.forget_commits()  # the next round is a new visit

    def _round(self, customer: int, checkout_too: bool) -> None:
        self._op("browse", self.browse())
        self._op("browse", self.browse())
        self._op("search", self.search())
        began = time.monotonic()  # a write: through run_transaction, replayed after a failover
        self.db.run_transaction(self.cart(customer), max_attempts=10)
        self.tally.timed("cart", began)
        if not checkout_too:
            return
        order_id, items = self.new_order(), dict[str, int]()
        began = time.monotonic()
        try:
            self.db.run_transaction(lambda s: checkout(s, customer, order_id, items),
                                    max_attempts=10)
        except CommitOutcomeUnknown as exc:
            self.checked_out(order_id, items, began, exc)
            return
        self.checked_out(order_id, items, began, None)
        self._op("history", self.history(customer, order_id))

    def _op(self, kind: str, work: Callable[[Session], object]) -> None:
        began = time.monotonic()
        with self.db.session() as s:
            work(s)
        self.tally.timed(kind, began)


class AsyncShopper(_Shopping):
    """One asyncio task of traffic: the same rounds as ``Shopper``, the same ORM code run in
    SQLAlchemy's greenlet (``AsyncSession.run_sync``), every wait on the event loop."""

    def __init__(self, db: AsyncDatabase[Any], tally: Tally, products: int,
                 customers: list[int], seed: int) -> None:
        super().__init__(tally, products, customers, seed)
        self.db = db

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            customer, checkout_too = self.next_visit()
            try:
                await self._round(customer, checkout_too)
            except FailoverError as exc:
                self.abandoned(exc)
            finally:
                self.db.forget_commits()  # this task's: the next round is a new visit

    async def _round(self, customer: int, checkout_too: bool) -> None:
        await self._op("browse", self.browse())
        await self._op("browse", self.browse())
        await self._op("search", self.search())
        began = time.monotonic()
        await self.db.run_transaction(_in_greenlet(self.cart(customer)), max_attempts=10)
        self.tally.timed("cart", began)
        if not checkout_too:
            return
        order_id, items = self.new_order(), dict[str, int]()
        began = time.monotonic()
        try:
            await self.db.run_transaction(
                _in_greenlet(lambda s: checkout(s, customer, order_id, items)), max_attempts=10)
        except CommitOutcomeUnknown as exc:
            self.checked_out(order_id, items, began, exc)
            return
        self.checked_out(order_id, items, began, None)
        await self._op("history", self.history(customer, order_id))

    async def _op(self, kind: str, work: Callable[[Session], object]) -> None:
        began = time.monotonic()
        async with self.db.session() as s:
            await s.run_sync(work)
        self.tally.timed(kind, began)


def _in_greenlet(work: Callable[[Session], T]) -> Callable[[AsyncSession], Awaitable[T]]:
    """An async function of an AsyncSession running sync ORM code ``work`` on its session."""

    async def run(s: AsyncSession) -> T:
        return await s.run_sync(work)

    return run


def add_to_cart(session: Session, customer_id: int, product_id: int, quantity: int) -> None:
    cart = session.scalars(select(Cart).where(Cart.customer_id == customer_id)).first()
    if cart is None:
        cart = Cart(customer_id=customer_id)
        session.add(cart)
        session.flush()
    item = session.get(CartItem, (cart.id, product_id))
    if item is None:
        session.add(CartItem(cart_id=cart.id, product_id=product_id, quantity=quantity))
    else:
        item.quantity += quantity


def checkout(session: Session, customer_id: int, order_id: str, out: dict[str, int]) -> str:
    """Order what is in the customer's cart and empty it; ``out["count"]``: items ordered."""
    cart = session.scalars(select(Cart).where(Cart.customer_id == customer_id)).first()
    lines = {} if cart is None else {i.product_id: i.quantity for i in cart.items}
    if not lines:  # an empty cart (its items went with an earlier order): buy one thing
        lines = {customer_id: 1}
    place_order(session, customer_id, lines, order_id=order_id)
    if cart is not None:
        session.execute(delete(CartItem).where(CartItem.cart_id == cart.id))
    out["count"] = sum(lines.values())
    return order_id
