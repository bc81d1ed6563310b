"""Read-your-writes across web requests, with no change to application code.

``CommitTokenMiddleware`` (ASGI: Starlette, FastAPI, Litestar) and
``CommitTokenWSGIMiddleware`` (Flask, Django's WSGI handler, any WSGI app) run every request in
a unit of work (``db.request_unit``, what ``db.unit_of_work`` opens):

- at the start, the commit token the client sent back (the ``X-Commit-Token`` header, else the
  ``aurora_commit`` cookie) becomes the unit's ``after``: every read of the request sees that
  commit (a reader that has it, else the writer);
- during the request, every commit, in any context the framework copies from the request's
  (worker threads of sync endpoints, dependencies with ``yield``, background tasks), is seen by
  the request's later reads;
- when the request committed, the response carries the new token: the cookie (HttpOnly,
  SameSite=Lax, ``Secure`` if asked, ``Max-Age`` 60 s: by then every reader has the commit and
  the token constrains nothing) and the header, for API clients;
- at the end the request's commits are forgotten: a thread's next request does not wait.

A token is the client's to send, so nothing in it is trusted: a missing, malformed, foreign or
implausible one (a position beyond the writer's) is ignored and logged at DEBUG, never an error
response; the most a client can cause is reads on the writer for its own requests.

Framework-free: no web framework is imported here.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy.util.concurrency import greenlet_spawn

from .consistency import CommitMark, UnitOfWork
from .errors import AuroraAccessError, InvalidCommitToken

log = logging.getLogger("aurora_access")

COOKIE_NAME = "aurora_commit"
HEADER_NAME = "X-Commit-Token"
#: a commit reaches every reader within seconds; after that a token constrains nothing
COOKIE_MAX_AGE_S = 60

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class UnitsOfWork(Protocol):
    """What the middleware needs of a database: ``Database`` or ``AsyncDatabase`` (whose
    ``unit_of_work`` is an async context manager; this one is sync and does no I/O)."""

    def request_unit(self, after: str | None = None) -> AbstractContextManager[UnitOfWork]: ...


class _CommitTokens:
    """Where tokens travel and how, shared by the ASGI and WSGI middleware."""

    def __init__(self, db: UnitsOfWork, cookie_name: str, header_name: str, secure: bool,
                 max_age: int, path: str) -> None:
        if max_age < 1:
            raise ValueError(f"max_age must be at least 1 second, not {max_age}")
        self.db = db
        self.cookie_name = cookie_name
        self.header_name = header_name
        self._cookie_attributes = f"; Max-Age={max_age}; Path={path}; HttpOnly; SameSite=Lax" + \
            ("; Secure" if secure else "")
        self._warned_late = False

    def check_late(self, unit: UnitOfWork, sent: CommitMark | None) -> None:
        """Warn (once) when the request committed after its response had started: the client
        did not get that commit's token, and its next request may read without it."""
        if unit.latest is not sent and not self._warned_late:
            self._warned_late = True
            log.warning(
                "a request committed after its response had started, so the client did not get "
                "the commit's token (FastAPI runs the exit of a dependency with yield after the "
                "response unless it is declared Depends(..., scope='function')): commit before "
                "the response is sent")

    def unit(self, header: str | None, cookies: str | None) -> AbstractContextManager[UnitOfWork]:
        """A unit of work reading after the client's token, if it sent a usable one."""
        token = header or _cookie(cookies, self.cookie_name)
        if token:
            try:
                return self.db.request_unit(after=token)
            except InvalidCommitToken as error:
                log.debug("ignoring the client's commit token: %s", error)
        return self.db.request_unit()

    def response_headers(self, unit: UnitOfWork, token: str | None = None) -> list[tuple[str, str]]:
        """The cookie and header that carry the unit's newest commit; none if it committed
        nothing or its position could not be learned (then logged: the response stands)."""
        if not unit.committed:
            return []
        if token is None:
            try:
                token = unit.token
            except AuroraAccessError as error:
                log.warning("no commit token for this response: %s", error)
                return []
        if token is None:
            return []
        return [("Set-Cookie", f"{self.cookie_name}={token}{self._cookie_attributes}"),
                (self.header_name, token)]


def _cookie(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header; None if absent. Tolerant of malformed
    headers (they come from clients): what cannot be read is not there."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"') or None
    return None


class CommitTokenMiddleware:
    """ASGI middleware: each HTTP request is a unit of work of ``db`` (module docstring).

    ``app.add_middleware(CommitTokenMiddleware, db=db)`` in Starlette and FastAPI;
    ``CommitTokenMiddleware(app, db=db)`` around any ASGI app. Other ASGI scopes (websocket,
    lifespan) pass through untouched.
    """

    def __init__(self, app: ASGIApp, db: UnitsOfWork, *, cookie_name: str = COOKIE_NAME,
                 header_name: str = HEADER_NAME, secure: bool = False,
                 max_age: int = COOKIE_MAX_AGE_S, path: str = "/") -> None:
        self.app = app
        self._tokens = _CommitTokens(db, cookie_name, header_name, secure, max_age, path)
        self._header_key = header_name.lower().encode("latin-1")
        self._asynchronous = bool(getattr(db, "asynchronous", False))

    async def _learn_token(self, unit: UnitOfWork) -> str | None:
        """The unit's token when its commit's position must be asked of the writer: an
        AsyncDatabase's query is awaited on the loop, a Database's runs in a thread."""
        if self._asynchronous:
            return await greenlet_spawn(_token_or_none, unit)
        return await asyncio.to_thread(_token_or_none, unit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = cookies = None
        for key, value in scope.get("headers", ()):
            if key == self._header_key:
                header = value.decode("latin-1")
            elif key == b"cookie":
                cookies = value.decode("latin-1") if cookies is None else \
                    f"{cookies}; {value.decode('latin-1')}"
        with self._tokens.unit(header, cookies) as unit:
            started: list[CommitMark | None] = []  # the newest commit when the response began

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    started.append(unit.latest)
                if message["type"] == "http.response.start" and unit.committed:
                    token = unit.known_token() or await self._learn_token(unit)
                    extra = self._tokens.response_headers(unit, token)
                    if extra:
                        message = dict(message)
                        message["headers"] = [*message.get("headers", ()), *(
                            (k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in extra)]
                await send(message)

            await self.app(scope, receive, send_with_token)
            if started:
                self._tokens.check_late(unit, started[0])


def _token_or_none(unit: UnitOfWork) -> str | None:
    try:
        return unit.token
    except AuroraAccessError as error:
        log.warning("no commit token for this response: %s", error)
        return None


class CommitTokenWSGIMiddleware:
    """WSGI middleware: each request is a unit of work of ``db`` (module docstring).

    ``flask_app.wsgi_app = CommitTokenWSGIMiddleware(flask_app.wsgi_app, db=db)``, or around
    any WSGI callable. The request runs in a copy of the thread's context, as an ASGI server
    runs each request in its own task: the unit of work never outlives it in the thread, even
    under a server that does not close response bodies; a streamed body is read in that copy.
    """

    def __init__(self, app: WSGIApp, db: UnitsOfWork, *, cookie_name: str = COOKIE_NAME,
                 header_name: str = HEADER_NAME, secure: bool = False,
                 max_age: int = COOKIE_MAX_AGE_S, path: str = "/") -> None:
        self.app = app
        self._tokens = _CommitTokens(db, cookie_name, header_name, secure, max_age, path)
        self._environ_key = "HTTP_" + header_name.upper().replace("-", "_")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        context = contextvars.copy_context()
        scope = self._tokens.unit(environ.get(self._environ_key), environ.get("HTTP_COOKIE"))
        unit = context.run(scope.__enter__)
        started: list[CommitMark | None] = []  # the newest commit when the response began

        def start_with_token(status: str, headers: list[tuple[str, str]],
                             exc_info: Any = None) -> Any:
            started.append(unit.latest)
            extra = self._tokens.response_headers(unit)
            return start_response(status, [*headers, *extra], *(
                () if exc_info is None else (exc_info,)))

        try:
            body = context.run(self.app, environ, start_with_token)
        except BaseException as error:
            context.run(scope.__exit__, type(error), error, error.__traceback__)
            raise
        if started:
            self._tokens.check_late(unit, started[-1])
        return _BodyInContext(body, context, scope)


class _BodyInContext:
    """A response body read in the request's context; closing it ends the unit of work."""

    def __init__(self, body: Iterable[bytes], context: contextvars.Context,
                 scope: AbstractContextManager[UnitOfWork]) -> None:
        self._body = body
        self._context = context
        self._scope = scope

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._body)
        while True:
            try:
                chunk = self._context.run(next, chunks)
            except StopIteration:
                return
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(self._scope.__exit__, None, None, None)
