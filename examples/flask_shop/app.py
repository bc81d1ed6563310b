"""The example shop as a Flask service on aurora-access.

Run it against a local cluster::

    eval "$(.venv/bin/aurora-access local up)"
    cd examples && ../.venv/bin/python -m flask_shop.app --port 8001

or, without the demo data, ``flask --app 'flask_shop.app:app_from_env()' run`` from
``examples/``.

``CommitTokenWSGIMiddleware`` carries read-your-writes across requests: a request reads after
the client's last commit (its ``aurora_commit`` cookie or ``X-Commit-Token`` header), one that
commits gets the new token back, and nothing of a request stays in the thread that serves the
next one. The request's session lives in ``g``, opened on first use; write views commit it
themselves, before the response is made (``teardown_request``, which closes it, runs after
the response has started: too late for the cookie).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

import shop_core as shop
from aurora_access import Database, RoutingSession
from aurora_access.web import CommitTokenWSGIMiddleware

bp = Blueprint("shop", __name__)
_EXTENSION = "aurora_access"
_SESSION = "aurora_session"
_SESSION_CONTEXT = "aurora_session_context"


def get_db() -> Database:
    return cast(Database, current_app.extensions[_EXTENSION])


def request_session() -> RoutingSession:
    """The request's routing session, opened on first use."""
    if _SESSION not in g:
        context = get_db().session()
        setattr(g, _SESSION, context.__enter__())
        setattr(g, _SESSION_CONTEXT, context)
    return cast(RoutingSession, getattr(g, _SESSION))


def close_session(error: BaseException | None) -> None:
    """teardown_request: close the request's session (committing what a view left, rolling
    back after an error no handler took)."""
    context = g.pop(_SESSION_CONTEXT, None)
    g.pop(_SESSION, None)
    if context is not None:
        if error is None:
            context.__exit__(None, None, None)
        else:
            context.__exit__(type(error), error, error.__traceback__)


def rollback() -> None:
    """A handled error reaches teardown as no error at all: undo what the view left, so that
    an error response never commits anything."""
    if _SESSION in g:
        getattr(g, _SESSION).rollback()


def respond(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


@bp.get("/products")
def search_products() -> Any:
    q = request.args.get("q", "")
    if len(q) > 200:
        raise shop.BadRequest("q: at most 200 characters")
    limit = _int(request.args.get("limit", "20"), "limit", 1, 100)
    return shop.search_products(request_session(), q, limit)


@bp.get("/products/<int:product_id>")
def get_product(product_id: int) -> Any:
    return shop.get_product(request_session(), product_id)


@bp.post("/customers/<int:customer_id>/cart/items")
def add_to_cart(customer_id: int) -> Response:
    body = _json_object()
    product_id = _int(body.get("product_id"), "product_id", 1, shop.MAX_ID)
    quantity = _int(body.get("quantity", 1), "quantity", 1, shop.MAX_QUANTITY)
    session = request_session()
    cart = shop.add_to_cart(session, customer_id, product_id, quantity)
    session.commit()  # here, not in teardown: the response is gone by then
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
    result = shop.checkout(get_db(), customer_id, order_id)
    return respond(result, 201 if result["created"] else 200)


@bp.get("/customers/<int:customer_id>/orders")
def order_history(customer_id: int) -> Any:
    limit = _int(request.args.get("limit", "50"), "limit", 1, 100)
    return shop.order_history(request_session(), customer_id, limit)


@bp.app_errorhandler(shop.ShopError)
def shop_error(error: shop.ShopError) -> tuple[Response, int]:
    rollback()
    return jsonify(detail=str(error)), error.status


@bp.app_errorhandler(shop.OutOfStock)
def out_of_stock(error: shop.OutOfStock) -> tuple[Response, int]:
    rollback()
    return jsonify(detail=str(error), product_id=error.product_id), 409


@bp.app_errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Response, int]:
    rollback()
    return jsonify(detail=error.description), error.code or 500


def _json_object(optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data():
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise shop.BadRequest("the body must be a JSON object")
    return body


def _int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (a JSON number or a query string), else 400."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise shop.BadRequest(f"{name}: an integer from {low} to {high}")
    return value


def create_app(db: Database) -> Flask:
    """The shop on ``db``, which stays the caller's to close."""
    app = Flask(__name__)
    app.wsgi_app = CommitTokenWSGIMiddleware(app.wsgi_app, db=db)  # type: ignore[method-assign]
    app.extensions[_EXTENSION] = db
    app.register_blueprint(bp)
    app.teardown_request(close_session)
    return app


def app_from_env() -> Flask:
    """For ``flask --app 'flask_shop.app:app_from_env()'``: a Database from the AURORA_*
    variables."""
    return create_app(Database.from_env())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    with Database.from_env() as db:
        shop.create_demo_data(db)
        create_app(db).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
