"""The Flask shop's own tables, as Flask-SQLAlchemy models, beside the demo shop's (products,
stock, customers, carts, orders: ``aurora_access.demo.models``, shared with the FastAPI shop).

- On Aurora (the default bind): customers' passwords, their API keys (``POST /login`` makes
  one, ``POST /logout`` deletes it) and their wish lists.
- On the ``analytics`` bind (SQLite by default, any other database in production): product
  page views. aurora-access leaves this bind alone: its statements go to its own engine.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from aurora_access.demo.models import Customer, Product
from flask_shop.extensions import db

# an example's tests log in hundreds of times: a cheap hash, not a recommendation
_PASSWORD_METHOD = "pbkdf2:sha256:1000"  # noqa: S105 - a method, not a password


class Credential(db.Model):  # type: ignore[name-defined, misc]
    __tablename__ = "shop_credentials"

    # columns, not "customers.id": the demo's tables live in another MetaData
    customer_id: Mapped[int] = mapped_column(ForeignKey(Customer.id), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(200))

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password, method=_PASSWORD_METHOD)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class ApiKey(db.Model):  # type: ignore[name-defined, misc]
    __tablename__ = "shop_api_keys"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey(Customer.id), index=True)


class WishList(db.Model):  # type: ignore[name-defined, misc]
    __tablename__ = "shop_wish_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey(Customer.id), index=True)
    name: Mapped[str] = mapped_column(String(100))
    items: Mapped[list[WishItem]] = relationship(cascade="all, delete-orphan")


class WishItem(db.Model):  # type: ignore[name-defined, misc]
    __tablename__ = "shop_wish_items"

    list_id: Mapped[int] = mapped_column(ForeignKey("shop_wish_lists.id"), primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey(Product.id), primary_key=True)


class ProductView(db.Model):  # type: ignore[name-defined, misc]
    __bind_key__ = "analytics"
    __tablename__ = "product_views"

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(index=True)  # no foreign key: another database
    viewed_at: Mapped[datetime] = mapped_column(server_default=func.now())
