"""The example shop as an async FastAPI service on ``AsyncDatabase``.

The same shop as ``fastapi_shop`` (and the same ``shop_core``), with ``async def`` endpoints on
an ``AsyncSession`` per request. The shop's logic is sync SQLAlchemy code; an endpoint runs it
with ``await session.run_sync(fn, ...)``, which calls ``fn`` with the AsyncSession's sync
session (a routing session) in SQLAlchemy's greenlet: every query is still awaited on the async
driver, and the loop serves other requests meanwhile. Checkout goes through ``await
db.run_transaction(...)``: a failover re-runs it, a COMMIT cut off by one is resolved, never
placed twice, and the client's ``order_id`` makes a retried checkout answer with the first
order.

``CommitTokenMiddleware`` carries read-your-writes across requests, as in the sync app: a
request reads after the client's last commit (its ``aurora_commit`` cookie or
``X-Commit-Token`` header), and one that commits gets the new token back in both. The session
dependency closes the session after the response has been sent (its default scope), so write
endpoints commit themselves, before returning. When the writer fails over under a request and
nothing of it committed, the answer is a 503 with ``Retry-After``; a COMMIT whose outcome could
not be learned is a 500 that says so.

Run it against a local cluster (uvicorn comes with the dev extras)::

    eval "$(.venv/bin/aurora-access local up)"
    cd examples && ../.venv/bin/python -m async_shop.app --port 8002

or, without the demo data, ``uvicorn --factory async_shop.app:app_from_env`` from
``examples/``.
"""

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, cast

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

import shop_core as shop
from aurora_access import AsyncDatabase, Database
from aurora_access.web import CommitTokenMiddleware
from fastapi_shop.app import CartItemIn, CheckoutIn, add_error_handlers  # shared with it

router = APIRouter()
Id = Annotated[int, Path(ge=1, le=shop.MAX_ID)]


def get_db(request: Request) -> AsyncDatabase:
    return cast(AsyncDatabase, request.app.state.db)


async def request_session(db: Annotated[AsyncDatabase, Depends(get_db)]
                          ) -> AsyncIterator[AsyncSession]:
    """One routing AsyncSession per request (the middleware makes it read after the client's
    last commit). An exception from the endpoint reaches the ``yield`` and rolls it back."""
    async with db.session() as session:
        yield session


DbDep = Annotated[AsyncDatabase, Depends(get_db)]
SessionDep = Annotated[AsyncSession, Depends(request_session)]


@router.get("/products")
async def search_products(session: SessionDep, q: Annotated[str, Query(max_length=200)] = "",
                          limit: Annotated[int, Query(ge=1, le=100)] = 20
                          ) -> list[shop.ProductOut]:
    return await session.run_sync(shop.search_products, q, limit)


@router.get("/products/{product_id}")
async def get_product(product_id: Id, session: SessionDep) -> shop.ProductOut:
    return await session.run_sync(shop.get_product, product_id)


@router.post("/customers/{customer_id}/cart/items")
async def add_to_cart(customer_id: Id, item: CartItemIn, session: SessionDep) -> shop.CartOut:
    cart = await session.run_sync(shop.add_to_cart, customer_id, item.product_id,
                                  item.quantity)
    await session.commit()  # here, not in the dependency: its exit comes after the response
    return cart


@router.post("/customers/{customer_id}/checkout", status_code=201)
async def checkout(customer_id: Id, db: DbDep, response: Response,
                   body: CheckoutIn | None = None) -> shop.CheckoutOut:
    """201 with a new order; 200 with the earlier one when its order id is sent again."""
    order_id = str(body.order_id) if body is not None and body.order_id is not None else None

    async def place(session: AsyncSession) -> shop.CheckoutOut:
        return await session.run_sync(shop.checkout_cart, customer_id, order_id)

    try:
        result = await db.run_transaction(place)
    except IntegrityError:
        if order_id is None:
            raise
        # another customer's checkout took this id between our look-up and our INSERT: the
        # second run finds that order and answers 409 (as shop_core.checkout does)
        result = await db.run_transaction(place)
    if not result["created"]:
        response.status_code = 200
    return result


@router.get("/customers/{customer_id}/orders")
async def order_history(customer_id: Id, session: SessionDep,
                        limit: Annotated[int, Query(ge=1, le=100)] = 50
                        ) -> list[shop.OrderOut]:
    return await session.run_sync(shop.order_history, customer_id, limit)


def create_app(db: AsyncDatabase, *, close_db_on_shutdown: bool = False) -> FastAPI:
    """The shop on ``db``, which stays the caller's unless ``close_db_on_shutdown``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_db_on_shutdown:
            await db.close()

    app = FastAPI(title="aurora-access example shop (async)", lifespan=lifespan)
    app.state.db = db
    app.add_middleware(CommitTokenMiddleware, db=db)
    app.include_router(router)

    add_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: an AsyncDatabase from the AURORA_* variables, one per process
    (made without I/O; it connects on the server's loop, at the first request)."""
    return create_app(AsyncDatabase.from_env(), close_db_on_shutdown=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import uvicorn  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise SystemExit("uvicorn is not installed: pip install uvicorn") from None
    with Database.from_env() as setup:  # the demo's tables and rows, before serving
        shop.create_demo_data(setup)
    uvicorn.run(app_from_env(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
