"""The shop's reads and transactions, shared by both example services.

Framework-free on purpose: the FastAPI and Flask apps differ only in how a request gets its
session and how the commit token travels, which is what the examples are about. Errors carry
their HTTP status so that each app maps them with one handler.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload
from typing_extensions import TypedDict  # pydantic (FastAPI) needs this one before 3.12

from aurora_access import Database, RoutingSession
from aurora_access.demo.models import Cart, CartItem, Customer, Order, Product, Stock
from aurora_access.demo.shop import OutOfStock, create_schema, place_order, seed

MAX_ID = 2**31 - 1  # the demo schema's ids are 32-bit: anything larger names nothing
MAX_QUANTITY = 10_000

__all__ = ["OutOfStock"]  # re-exported: the apps map it to 409


class ShopError(Exception):
    """A request the shop refuses; ``status`` is the HTTP status to answer with."""

    status = 400


class BadRequest(ShopError):
    status = 400


class NotFound(ShopError):
    status = 404


class Conflict(ShopError):
    status = 409


class ProductOut(TypedDict):
    id: int
    sku: str
    name: str
    price_cents: int
    in_stock: int


class CartItemOut(TypedDict):
    product_id: int
    quantity: int


class CartOut(TypedDict):
    customer_id: int
    items: list[CartItemOut]


class OrderLineOut(TypedDict):
    product_id: int
    quantity: int
    price_cents: int


class OrderOut(TypedDict):
    id: str
    total_cents: int
    created_at: str
    lines: list[OrderLineOut]


class CheckoutOut(TypedDict):
    order_id: str
    created: bool


def create_demo_data(db: Database) -> None:
    """The demo tables and rows, if missing (for running a service by hand and for tests)."""
    create_schema(db.engine("writer"))
    try:
        with db.writer() as s:
            seed(s)
    except IntegrityError:
        pass  # another process (the other service, started at the same time) seeded them


def search_products(s: Session, q: str, limit: int) -> list[ProductOut]:
    """Products whose name contains ``q`` (any case); a read, so it runs on a reader."""
    rows = s.execute(select(Product, Stock.quantity).outerjoin(Stock)
                     .where(Product.name.icontains(q, autoescape=True))
                     .order_by(Product.id).limit(limit))
    return [_product(p, quantity) for p, quantity in rows]


def get_product(s: Session, product_id: int) -> ProductOut:
    row = s.execute(select(Product, Stock.quantity).outerjoin(Stock)
                    .where(Product.id == _id(product_id, "product"))).first()
    if row is None:
        raise NotFound(f"no product {product_id}")
    return _product(*row)


def add_to_cart(s: Session, customer_id: int, product_id: int, quantity: int) -> CartOut:
    """Add ``quantity`` of a product to the customer's cart (one cart per customer); the caller
    commits.

    The customer row is locked first (SELECT ... FOR UPDATE): that sends the whole transaction
    to the writer, where the cart is current rather than a reader's lagging copy, and
    serialises concurrent changes to one customer's cart (and its checkout).
    """
    if s.get(Customer, _id(customer_id, "customer"), with_for_update=True) is None:
        raise NotFound(f"no customer {customer_id}")
    if s.get(Product, _id(product_id, "product")) is None:
        raise NotFound(f"no product {product_id}")
    cart = s.scalar(select(Cart).where(Cart.customer_id == customer_id).order_by(Cart.id))
    if cart is None:
        cart = Cart(customer_id=customer_id)
        s.add(cart)
    item = next((i for i in cart.items if i.product_id == product_id), None)
    if item is None:
        cart.items.append(CartItem(product_id=product_id, quantity=quantity))
    else:
        item.quantity += quantity
    s.flush()
    return {"customer_id": customer_id,
            "items": [{"product_id": i.product_id, "quantity": i.quantity}
                      for i in sorted(cart.items, key=lambda i: i.product_id)]}


def checkout(db: Database, customer_id: int, order_id: str | None = None) -> CheckoutOut:
    """Order everything in the customer's cart and empty it, in one ``db.run_transaction``: a
    failover re-runs it, and a commit cut off by one is resolved, never placed twice.

    ``order_id`` is the client's idempotency key: the same key again for the same customer
    returns the order placed the first time (``created`` False) and leaves the cart alone, so a
    client may retry a checkout whose response it lost; a key another customer's order holds
    is a Conflict. Raises OutOfStock (nothing written), NotFound, BadRequest (empty cart).
    """

    def place(s: RoutingSession) -> CheckoutOut:
        return checkout_cart(s, customer_id, order_id)

    try:
        return db.run_transaction(place)
    except IntegrityError:
        if order_id is None:
            raise
        # another customer's checkout took this id between our look-up and our INSERT: the
        # second run finds that order and answers Conflict
        return db.run_transaction(place)


def checkout_cart(s: Session, customer_id: int, order_id: str | None = None) -> CheckoutOut:
    """The transaction of ``checkout``, for a transaction runner to run (and re-run): the
    async shop runs it in ``AsyncDatabase.run_transaction``, through ``session.run_sync``."""
    # the lock serialises checkouts of one customer: a repeat waits, then sees the order
    if s.get(Customer, _id(customer_id, "customer"), with_for_update=True) is None:
        raise NotFound(f"no customer {customer_id}")
    if order_id is not None and (existing := s.get(Order, order_id)) is not None:
        if existing.customer_id != customer_id:
            raise Conflict(f"order id {order_id} belongs to another customer's order")
        return {"order_id": existing.id, "created": False}
    items = s.scalars(select(CartItem).join(Cart)
                      .where(Cart.customer_id == customer_id)).all()
    if not items:
        raise BadRequest("the cart is empty")
    placed = place_order(s, customer_id, {i.product_id: i.quantity for i in items}, order_id)
    for item in items:
        s.delete(item)
    return {"order_id": placed, "created": True}


def order_history(s: Session, customer_id: int, limit: int = 50) -> list[OrderOut]:
    """The customer's orders, newest first (to the second on MariaDB, whose ``now()`` has no
    fraction). Reads: on a reader that has applied the request's token, so an order the
    client just placed is there."""
    if s.get(Customer, _id(customer_id, "customer")) is None:
        raise NotFound(f"no customer {customer_id}")
    orders = s.scalars(select(Order).where(Order.customer_id == customer_id)
                       .order_by(Order.created_at.desc(), Order.id)
                       .options(selectinload(Order.lines)).limit(limit))
    return [{"id": o.id, "total_cents": o.total_cents, "created_at": o.created_at.isoformat(),
             "lines": [{"product_id": line.product_id, "quantity": line.quantity,
                        "price_cents": line.price_cents}
                       for line in sorted(o.lines, key=lambda line: line.product_id)]}
            for o in orders]


def _id(value: int, what: str) -> int:
    if not 0 < value <= MAX_ID:
        raise NotFound(f"no {what} {value}")
    return value


def _product(product: Product, quantity: int | None) -> ProductOut:
    return {"id": product.id, "sku": product.sku, "name": product.name,
            "price_cents": product.price_cents, "in_stock": quantity or 0}
