"""The example shop as a FastAPI service on aurora-access.

Run it against a local cluster (uvicorn and the metrics exporter are not dependencies of
aurora-access)::

    .venv/bin/pip install uvicorn 'aurora-access[otel]' opentelemetry-sdk \
        opentelemetry-exporter-prometheus
    eval "$(.venv/bin/aurora-access local up)"
    cd examples && ../.venv/bin/python -m fastapi_shop.app --port 8000

or, without the demo data, ``uvicorn --factory fastapi_shop.app:app_from_env`` from
``examples/``.

``CommitTokenMiddleware`` carries read-your-writes across requests: a request reads after the
client's last commit (its ``aurora_commit`` cookie or ``X-Commit-Token`` header), and one that
commits gets the new token back in both. FastAPI runs a sync endpoint, and each half of a sync
``yield`` dependency, in worker threads under copies of the request's context: the middleware's
unit of work is shared by all of them. The session dependency closes the session after the
response has been sent (its default scope), so write endpoints commit themselves, before
returning: a commit in the dependency's exit would come too late for the response's cookie.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, cast

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

import shop_core as shop
from aurora_access import (
    CommitOutcomeUnknown,
    Database,
    FailoverError,
    NoWriterAvailable,
    RoutingSession,
    TransactionReplayRequired,
)
from aurora_access.web import CommitTokenMiddleware

router = APIRouter()
Id = Annotated[int, Path(ge=1, le=shop.MAX_ID)]


class CartItemIn(BaseModel):
    product_id: int = Field(ge=1, le=shop.MAX_ID)
    quantity: int = Field(default=1, ge=1, le=shop.MAX_QUANTITY)


class CheckoutIn(BaseModel):
    order_id: uuid.UUID | None = None  # idempotency key: the same one again, the same order


def get_db(request: Request) -> Database:
    return cast(Database, request.app.state.db)


def request_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[RoutingSession]:
    """One routing session per request (the middleware makes it read after the client's last
    commit). An exception from the endpoint reaches the ``yield`` and rolls it back."""
    with db.session() as session:
        yield session


DbDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[RoutingSession, Depends(request_session)]


@router.get("/products")
def search_products(session: SessionDep, q: Annotated[str, Query(max_length=200)] = "",
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[shop.ProductOut]:
    return shop.search_products(session, q, limit)


@router.get("/products/{product_id}")
def get_product(product_id: Id, session: SessionDep) -> shop.ProductOut:
    return shop.get_product(session, product_id)


@router.post("/customers/{customer_id}/cart/items")
def add_to_cart(customer_id: Id, item: CartItemIn, session: SessionDep) -> shop.CartOut:
    cart = shop.add_to_cart(session, customer_id, item.product_id, item.quantity)
    session.commit()  # here, not in the dependency: its exit comes after the response
    return cart


@router.post("/customers/{customer_id}/checkout", status_code=201)
def checkout(customer_id: Id, db: DbDep, response: Response,
             body: CheckoutIn | None = None) -> shop.CheckoutOut:
    """201 with a new order; 200 with the earlier one when its order id is sent again."""
    order_id = str(body.order_id) if body is not None and body.order_id is not None else None
    result = shop.checkout(db, customer_id, order_id)
    if not result["created"]:
        response.status_code = 200
    return result


@router.get("/customers/{customer_id}/orders")
def order_history(customer_id: Id, session: SessionDep,
                  limit: Annotated[int, Query(ge=1, le=100)] = 50) -> list[shop.OrderOut]:
    return shop.order_history(session, customer_id, limit)


def create_app(db: Database, *, close_db_on_shutdown: bool = False,
               metrics: CollectorRegistry | None = None) -> FastAPI:
    """The shop on ``db``, which stays the caller's unless ``close_db_on_shutdown``.
    ``metrics``: a Prometheus registry to serve on ``/metrics`` (see ``prometheus_metrics``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_db_on_shutdown:
            db.close()

    app = FastAPI(title="aurora-access example shop", lifespan=lifespan)
    app.state.db = db
    app.add_middleware(CommitTokenMiddleware, db=db)
    app.include_router(router)
    if metrics is not None:
        registry = metrics

        # a route, not ``app.mount("/metrics", make_asgi_app(...))``: a mount answers
        # /metrics with a redirect to /metrics/
        @app.get("/metrics", include_in_schema=False)
        def metrics_page() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    add_error_handlers(app)
    return app


def prometheus_metrics() -> tuple[MeterProvider, CollectorRegistry]:
    """The library's OpenTelemetry metrics, exported for Prometheus: give the provider to the
    Database (``meter_provider=``) and the registry to ``create_app`` (``/metrics``). The
    OpenTelemetry Prometheus exporter rather than a ``prometheus_client`` collector of our
    own: the same instruments then serve OTLP exporters too, under the semantic conventions'
    names (``db.client.operation.duration`` becomes
    ``db_client_operation_duration_seconds``)."""
    registry = CollectorRegistry()
    return MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)]), registry


def add_error_handlers(app: FastAPI) -> None:
    """The shop's errors as answers; a failover with nothing of the request committed is a
    503 the client may retry (checkout's run_transaction has re-run it already), a COMMIT cut
    off by one a 500 that says its outcome is unknown (only the client can tell whether
    sending the request again is safe). Shared with the async shop."""

    @app.exception_handler(shop.ShopError)
    async def shop_error(request: Request, error: shop.ShopError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(shop.OutOfStock)
    async def out_of_stock(request: Request, error: shop.OutOfStock) -> JSONResponse:
        return JSONResponse({"detail": str(error), "product_id": error.product_id},
                            status_code=409)

    @app.exception_handler(TransactionReplayRequired)
    @app.exception_handler(NoWriterAvailable)
    async def failing_over(request: Request, error: FailoverError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(CommitOutcomeUnknown)
    async def outcome_unknown(request: Request, error: CommitOutcomeUnknown) -> JSONResponse:
        return JSONResponse({"detail": str(error), "outcome": "unknown"}, status_code=500)


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: a Database from the AURORA_* variables, one per process, its
    metrics on ``/metrics``."""
    provider, registry = prometheus_metrics()
    return create_app(Database.from_env(meter_provider=provider), close_db_on_shutdown=True,
                      metrics=registry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import uvicorn  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError:
        raise SystemExit("uvicorn is not installed: pip install uvicorn") from None
    app = app_from_env()
    shop.create_demo_data(app.state.db)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
