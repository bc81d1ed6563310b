"""The Flask shop's endpoints, on Flask-SQLAlchemy's ``db.session`` (routed by aurora-access).

The shop (products, cart, checkout, order history) is ``shop_core``'s, shared with the FastAPI
shop; accounts, API keys and wish lists are this app's own (``models.py``). Views commit before
they return: the WSGI middleware puts the commit's token on the response as it starts, and
Flask-SQLAlchemy's teardown, which closes the session, comes after that.
"""

from __future__ import annotations

import os
import secrets
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

import shop_core as shop
from aurora_access import (
    CommitOutcomeUnknown,
    FailoverError,
    NoWriterAvailable,
    TransactionReplayRequired,
)
from aurora_access.demo.models import Customer, Product
from flask_shop.extensions import aurora, db
from flask_shop.models import ApiKey, Credential, ProductView, WishItem, WishList

bp = Blueprint("shop", __name__)


class Unauthorized(shop.ShopError):
    status = 401


# -- the shop ---------------------------------------------------------------------------------

@bp.get("/products")
def search_products() -> Any:
    q = request.args.get("q", "")
    if len(q) > 200:
        raise shop.BadRequest("q: at most 200 characters")
    limit = _int(request.args.get("limit", "20"), "limit", 1, 100)
    return shop.search_products(db.session(), q, limit)


@bp.get("/products/<int:product_id>")
def get_product(product_id: int) -> Any:
    """The product (from Aurora, on a reader), and a page view recorded in analytics (another
    bind, another database: aurora-access routes nothing there)."""
    product = shop.get_product(db.session(), product_id)
    db.session.add(ProductView(product_id=product_id))
    db.session.commit()
    return product


@bp.get("/products/<int:product_id>/views")
def product_views(product_id: int) -> Any:
    count = db.session.scalar(select(func.count()).select_from(ProductView)
                              .where(ProductView.product_id == product_id))
    return {"product_id": product_id, "views": count}


@bp.post("/customers/<int:customer_id>/cart/items")
def add_to_cart(customer_id: int) -> Response:
    """Through run_transaction, as checkout: a failover re-runs it, and a COMMIT cut off by
    one is resolved (a plain session commit would answer 500, outcome unknown)."""
    body = _json_object()
    product_id = _int(body.get("product_id"), "product_id", 1, shop.MAX_ID)
    quantity = _int(body.get("quantity", 1), "quantity", 1, shop.MAX_QUANTITY)
    cart = aurora.database(current_app).run_transaction(
        lambda s: shop.add_to_cart(s, customer_id, product_id, quantity))
    return respond(cart)


@bp.post("/customers/<int:customer_id>/checkout")
def checkout(customer_id: int) -> Response:
    """201 with a new order; 200 with the earlier one when its order id is sent again."""
    order_id = _json_object(optional=True).get("order_id")
    if order_id is not None:
        try:
            order_id = str(uuid.UUID(str(order_id)))
        except ValueError:
            raise shop.BadRequest("order_id: a UUID") from None
    result = shop.checkout(aurora.database(current_app), customer_id, order_id)
    return respond(result, 201 if result["created"] else 200)


@bp.get("/customers/<int:customer_id>/orders")
def order_history(customer_id: int) -> Any:
    limit = _int(request.args.get("limit", "50"), "limit", 1, 100)
    return shop.order_history(db.session(), customer_id, limit)


# -- accounts ---------------------------------------------------------------------------------

@bp.post("/customers")
def sign_up() -> Response:
    body = _json_object()
    email, name, password = (_text(body, k) for k in ("email", "name", "password"))
    if db.session.scalar(select(Customer.id).where(Customer.email == email)) is not None:
        raise shop.Conflict(f"{email} has an account")
    customer = Customer(email=email, name=name)
    db.session.add(customer)
    db.session.flush()
    credential = Credential(customer_id=customer.id)
    credential.set_password(password)
    db.session.add(credential)
    db.session.commit()
    return respond({"id": customer.id}, 201)


@bp.post("/login")
def login() -> Response:
    """An API key for ``Authorization: Bearer <key>``; 401 for a wrong email or password."""
    body = _json_object()
    email, password = _text(body, "email"), _text(body, "password")
    found = db.session.execute(select(Customer.id, Credential).join(
        Credential, Credential.customer_id == Customer.id).where(Customer.email == email)).first()
    if found is None or not found[1].check_password(password):
        raise Unauthorized("wrong email or password")
    key = secrets.token_hex(16)
    db.session.add(ApiKey(key=key, customer_id=found[0]))
    db.session.commit()
    return respond({"api_key": key})


@bp.get("/me")
def me() -> Any:
    customer = db.session.get(Customer, _key().customer_id)
    assert customer is not None
    return {"id": customer.id, "email": customer.email, "name": customer.name}


@bp.post("/logout")
def logout() -> Response:
    db.session.delete(_key())
    db.session.commit()
    return Response(status=204)


@bp.put("/me/password")
def change_password() -> Response:
    password = _text(_json_object(), "password")
    credential = db.session.get(Credential, _key().customer_id)
    assert credential is not None
    credential.set_password(password)
    db.session.commit()
    return Response(status=204)


@bp.post("/me/lists")
def new_list() -> Response:
    wish_list = WishList(customer_id=_key().customer_id, name=_text(_json_object(), "name"))
    db.session.add(wish_list)
    db.session.commit()
    return respond({"id": wish_list.id}, 201)


@bp.delete("/me/lists/<int:list_id>")
def delete_list(list_id: int) -> Response:
    db.session.delete(_own_list(list_id))
    db.session.commit()
    return Response(status=204)


@bp.post("/me/lists/<int:list_id>/items")
def add_wish(list_id: int) -> Response:
    """A list deleted by the client's last request must be gone here (404): read stale, it
    would be found, and the item's INSERT would break its foreign key on the writer."""
    wish_list = _own_list(list_id)
    product_id = _int(_json_object().get("product_id"), "product_id", 1, shop.MAX_ID)
    if db.session.get(Product, product_id) is None:
        raise shop.NotFound(f"no product {product_id}")
    db.session.add(WishItem(list_id=wish_list.id, product_id=product_id))
    db.session.commit()
    return respond({"list_id": list_id, "product_id": product_id}, 201)


def _key() -> ApiKey:
    header = request.headers.get("Authorization", "")
    key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    found = db.session.get(ApiKey, key) if key else None
    if found is None:
        raise Unauthorized("no valid API key")
    return found


def _own_list(list_id: int) -> WishList:
    wish_list = db.session.get(WishList, list_id)
    if wish_list is None or wish_list.customer_id != _key().customer_id:
        raise shop.NotFound(f"no list {list_id}")
    return wish_list


@bp.get("/stats")
def stats() -> Any:
    """The library's counters in this worker process (where reads went), and its pid."""
    return {"pid": os.getpid(), **aurora.database(current_app).stats()}


@bp.after_app_request
def served_by(response: Response) -> Response:
    """Which worker process answered (several serve one port under gunicorn)."""
    response.headers["X-Served-By"] = str(os.getpid())
    return response


# -- errors and input -------------------------------------------------------------------------

@bp.app_errorhandler(shop.ShopError)
def shop_error(error: shop.ShopError) -> tuple[Response, int]:
    db.session.rollback()
    return jsonify(detail=str(error)), error.status


@bp.app_errorhandler(shop.OutOfStock)
def out_of_stock(error: shop.OutOfStock) -> tuple[Response, int]:
    db.session.rollback()
    return jsonify(detail=str(error), product_id=error.product_id), 409


@bp.app_errorhandler(TransactionReplayRequired)
@bp.app_errorhandler(NoWriterAvailable)
def failing_over(error: FailoverError) -> tuple[Response, int, dict[str, str]]:
    """The writer failed over under this request and nothing of it was committed: the client
    may send it again (checkouts go through run_transaction, which re-runs them itself)."""
    db.session.rollback()
    return jsonify(detail=str(error)), 503, {"Retry-After": "1"}


@bp.app_errorhandler(CommitOutcomeUnknown)
def outcome_unknown(error: CommitOutcomeUnknown) -> tuple[Response, int]:
    """A COMMIT of the request session was cut off by a failover: it may or may not have
    happened, and only the client can tell whether sending the request again is safe."""
    db.session.rollback()
    return jsonify(detail=str(error), outcome="unknown"), 500


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int]:
    db.session.rollback()
    return jsonify(detail=error.description), error.code or 500


def respond(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def _json_object(optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data():
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise shop.BadRequest("the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise shop.BadRequest(f"{name}: a string of 1 to 200 characters")
    return value


def _int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (a JSON number or a query string), else 400."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise shop.BadRequest(f"{name}: an integer from {low} to {high}")
    return value
