"""Shop operations on the demo schema, written as a service would write them."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.orm import Session

from .models import Base, Customer, Order, OrderLine, Product, Stock


class OutOfStock(Exception):
    """A product has fewer items in stock than the order asks for."""

    def __init__(self, product_id: int) -> None:
        self.product_id = product_id
        super().__init__(f"product {product_id} is out of stock")


def create_schema(engine: Engine) -> None:
    """Create the demo tables (on the writer) if they do not exist."""
    Base.metadata.create_all(engine)


def seed(session: Session, products: int = 50, customers: int = 50,
         stock_each: int = 1000) -> None:
    """Products with stock and customers, unless there are some already."""
    if session.scalar(select(func.count()).select_from(Product)):
        return
    for i in range(1, products + 1):
        session.add(Product(id=i, sku=f"SKU-{i:05d}", name=f"Product {i}",
                            price_cents=100 + 7 * i))
        session.add(Stock(product_id=i, quantity=stock_each))
    for i in range(1, customers + 1):
        session.add(Customer(id=i, email=f"customer{i}@example.com", name=f"Customer {i}"))
    session.flush()
    advance_id_sequences(session.connection())


def advance_id_sequences(connection: Connection) -> None:
    """After rows inserted with explicit ids: PostgreSQL's id sequences do not move by
    themselves (MySQL's AUTO_INCREMENT does), so the next row inserted without an id would
    take id 1 again."""
    if connection.dialect.name != "postgresql":
        return
    for table in ("products", "customers"):
        connection.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT coalesce(max(id), 1) FROM {table}))")

def place_order(session: Session, customer_id: int, items: Mapping[int, int],
                order_id: str | None = None) -> str:
    """Take stock and record an order with its lines; return the order id.

    Stock is taken with a conditional UPDATE per product (no read-modify-write race); raises
    OutOfStock, leaving the caller to roll back.
    """
    order_id = order_id or str(uuid.uuid4())
    total = 0
    lines = []
    for product_id, quantity in sorted(items.items()):
        # rowcount, not RETURNING: MariaDB and MySQL have no UPDATE ... RETURNING
        taken = session.execute(
            update(Stock)
            .where(Stock.product_id == product_id, Stock.quantity >= quantity)
            .values(quantity=Stock.quantity - quantity)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise OutOfStock(product_id)
        price = session.scalar(select(Product.price_cents).where(Product.id == product_id))
        assert price is not None
        total += price * quantity
        lines.append(OrderLine(product_id=product_id, quantity=quantity, price_cents=price))
    session.add(Order(id=order_id, customer_id=customer_id, total_cents=total, lines=lines))
    session.flush()
    return order_id
