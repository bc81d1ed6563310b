"""Read-your-writes in the shapes web applications take (issue 10), on both engines with lagging
readers (PostgreSQL 50 ms, MariaDB 1 s): FastAPI's context copies, the next request after a
commit, a test's own session, the ASGI and WSGI middleware and what a client may send them."""

import contextvars
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from flask import Flask, jsonify
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from aurora_access import Database, RoutingSession
from aurora_access.local import LocalCluster
from aurora_access.web import CommitTokenMiddleware, CommitTokenWSGIMiddleware
from engines import settle, where

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

ROUNDS = {"postgresql": 30, "mysql": 6}  # MariaDB's readers lag 1 s: fewer, slower rounds


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "web_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


@pytest.fixture(scope="module")
def db(engine_cluster: LocalCluster) -> Iterator[Database]:
    database = Database.from_env(engine_cluster.env())
    Base.metadata.create_all(database.engine("writer"))
    yield database
    database.close()


@pytest.fixture(autouse=True)
def fresh_context(db: Database) -> None:
    db.forget_commits()  # as a new request would start


class NoteOut(BaseModel):
    """What FastAPI validates a returned Note against, attribute by attribute."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    body: str


def note_of(session: Session, note_id: int) -> dict[str, Any]:
    note = session.get(Note, note_id)
    if note is None:
        raise HTTPException(404, "no such note")
    return {"id": note.id, "body": note.body}


def fastapi_app(db: Database, middleware: bool = True) -> FastAPI:
    """Sync endpoints, a session per request from a ``yield`` dependency: the tutorial shape."""
    app = FastAPI()
    if middleware:
        app.add_middleware(CommitTokenMiddleware, db=db)

    def get_session() -> Iterator[RoutingSession]:
        with db.session() as session:
            yield session

    SessionDep = Annotated[RoutingSession, Depends(get_session)]

    @app.post("/notes", status_code=201, response_model=NoteOut)
    def create(body: dict[str, str], session: SessionDep) -> Any:
        note = Note(body=body["body"])
        session.add(note)
        session.commit()
        return note  # serialised (and its expired attributes reloaded) in another context

    @app.put("/notes/{note_id}")
    def update(note_id: int, body: dict[str, str], session: SessionDep) -> dict[str, Any]:
        note = session.get(Note, note_id)
        assert note is not None
        note.body = body["body"]
        session.commit()
        return {"ok": True}

    @app.delete("/notes/{note_id}", status_code=204)
    def delete(note_id: int, session: SessionDep) -> None:
        session.delete(session.get(Note, note_id))
        session.commit()

    @app.get("/notes/{note_id}")
    def read(note_id: int, session: SessionDep) -> dict[str, Any]:
        return note_of(session, note_id)

    @app.get("/notes")
    def list_ids(session: SessionDep) -> list[int]:
        return list(session.scalars(select(Note.id)))

    return app


def flask_app(db: Database) -> Flask:
    app = Flask(__name__)
    app.wsgi_app = CommitTokenWSGIMiddleware(app.wsgi_app, db=db)  # type: ignore[method-assign]

    @app.post("/notes")
    def create() -> Any:
        with db.session() as session:
            note = Note(body="new")
            session.add(note)
            session.commit()
            return jsonify({"id": note.id, "body": note.body}), 201

    @app.put("/notes/<int:note_id>")
    def update(note_id: int) -> Any:
        from flask import request  # noqa: PLC0415

        with db.session() as session:
            note = session.get(Note, note_id)
            assert note is not None
            note.body = request.get_json()["body"]
        return jsonify({"ok": True})

    @app.delete("/notes/<int:note_id>")
    def delete(note_id: int) -> Any:
        with db.session() as session:
            session.delete(session.get(Note, note_id))
        return "", 204

    @app.get("/notes/<int:note_id>")
    def read(note_id: int) -> Any:
        with db.session() as session:
            note = session.get(Note, note_id)
            return (jsonify({"id": note.id, "body": note.body}) if note else ("", 404))

    @app.get("/notes")
    def list_ids() -> Any:
        with db.session() as session:
            return jsonify(list(session.scalars(select(Note.id))))

    return app


@pytest.fixture(params=["asgi", "wsgi"])
def client(request: pytest.FixtureRequest, db: Database) -> Iterator[httpx.Client]:
    """A browser (its own cookie jar) on the FastAPI app (ASGI middleware) or the Flask app
    (WSGI middleware, run in this thread as a threaded server would)."""
    if request.param == "asgi":
        client: httpx.Client = TestClient(fastapi_app(db))
    else:
        client = httpx.Client(transport=httpx.WSGITransport(app=flask_app(db)),
                              base_url="http://testserver")
    with client:
        yield client


def test_a_sync_endpoint_returns_the_object_it_committed(db: Database) -> None:
    """``session.add(note); session.commit(); return note``: FastAPI reloads the expired note
    in another copy of the request's context, where no commit mark of the request is; the
    session's own commit sends that read where the note is. No middleware needed."""
    with TestClient(fastapi_app(db, middleware=False)) as client:
        for n in range(ROUNDS[db.dialect.name]):
            response = client.post("/notes", json={"body": f"note {n}"})
            assert response.status_code == 201, response.text
            assert response.json()["body"] == f"note {n}"


def test_the_next_request_reads_what_the_last_one_committed(client: httpx.Client,
                                                            db: Database) -> None:
    note_id = client.post("/notes", json={"body": "0"}).json()["id"]
    for n in range(1, ROUNDS[db.dialect.name]):
        assert client.put(f"/notes/{note_id}", json={"body": str(n)}).status_code == 200
        assert client.get(f"/notes/{note_id}").json()["body"] == str(n)


def test_a_deleted_row_is_gone_from_the_next_list(client: httpx.Client, db: Database) -> None:
    for _ in range(ROUNDS[db.dialect.name] // 3):
        note_id = client.post("/notes", json={"body": "to delete"}).json()["id"]
        assert client.delete(f"/notes/{note_id}").status_code == 204
        assert note_id not in client.get("/notes").json()
        assert client.get(f"/notes/{note_id}").status_code == 404


def test_the_header_carries_the_token_for_api_clients(client: httpx.Client,
                                                      db: Database) -> None:
    created = client.post("/notes", json={"body": "a"})
    note_id = created.json()["id"]
    client.cookies.clear()  # an API client: no cookie jar, the header instead
    changed = client.put(f"/notes/{note_id}", json={"body": "b"},
                         headers={"X-Commit-Token": created.headers["X-Commit-Token"]})
    token = changed.headers["X-Commit-Token"]
    client.cookies.clear()
    assert client.get(f"/notes/{note_id}", headers={"X-Commit-Token": token}
                      ).json()["body"] == "b"


def test_the_cookie_is_set_only_by_requests_that_committed(client: httpx.Client) -> None:
    created = client.post("/notes", json={"body": "c"})
    cookie = created.headers["set-cookie"]
    assert cookie.startswith("aurora_commit=aurora1:")
    for attribute in ("HttpOnly", "SameSite=Lax", "Max-Age=60", "Path=/"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()
    read = client.get(f"/notes/{created.json()['id']}")
    assert "set-cookie" not in read.headers and "x-commit-token" not in read.headers


def test_secure_cookies_and_other_names_on_request(db: Database) -> None:
    app = fastapi_app(db, middleware=False)
    app.add_middleware(CommitTokenMiddleware, db=db, secure=True, cookie_name="seen",
                       header_name="X-Seen", max_age=5)
    with TestClient(app) as client:
        response = client.post("/notes", json={"body": "s"})
    assert response.headers["x-seen"] and "; Secure" in response.headers["set-cookie"]
    assert response.headers["set-cookie"].startswith("seen=")
    assert "Max-Age=5" in response.headers["set-cookie"]


BAD_TOKENS = {
    "garbage": "not a token",
    "foreign engine": "aurora1:oracle:10:1700000000000",
    "malformed": "aurora1:{engine}:zz:12",
    "negative": "aurora1:{engine}:-5:12",
    "too long": "aurora1:{engine}:" + "1" * 200 + ":12",
    "empty": "",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_a_bad_token_is_ignored(client: httpx.Client, db: Database, kind: str,
                                caplog: pytest.LogCaptureFixture) -> None:
    note_id = client.post("/notes", json={"body": "t"}).json()["id"]
    client.cookies.clear()
    settle(db)  # every reader has the note: what a request answers depends on the token only
    token = BAD_TOKENS[kind].format(engine=db.dialect.name)
    with caplog.at_level(logging.DEBUG, logger="aurora_access"):
        by_header = client.get(f"/notes/{note_id}", headers={"X-Commit-Token": token})
        client.cookies.set("aurora_commit", token)
        by_cookie = client.get(f"/notes/{note_id}")
    assert by_header.status_code == 200
    assert by_cookie.status_code == 200
    if token:
        assert any("ignoring the client's commit token" in r.message for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_token_beyond_the_writer_is_ignored_at_once(client: httpx.Client,
                                                      db: Database) -> None:
    """A position no reader will ever reach (forged, or from another cluster) must not make
    every read of the request wait for AURORA_RYW_WAIT_MS and then go to the writer."""
    note_id = client.post("/notes", json={"body": "far"}).json()["id"]
    client.cookies.clear()
    token = f"aurora1:{db.dialect.name}:{2 ** 62:x}:1700000000000"
    before = db.stats()
    for _ in range(5):
        client.get(f"/notes/{note_id}", headers={"X-Commit-Token": token})
    after = db.stats()
    assert after["ryw_tokens_ignored"] - before["ryw_tokens_ignored"] == 5
    assert after["ryw_waits"] == before["ryw_waits"]
    assert after["ryw_fallbacks"] == before["ryw_fallbacks"]


def test_yield_dependencies_and_background_tasks_share_the_request(db: Database) -> None:
    """A dependency that commits as it exits (``scope="function"``: before the response) puts
    the token on the response; a background task reads what its request committed."""
    seen: list[str] = []
    app = FastAPI()
    app.add_middleware(CommitTokenMiddleware, db=db)

    def committing_session() -> Iterator[RoutingSession]:
        with db.session() as session:  # commits what the endpoint left, on exit
            yield session

    def read_back(note_id: int) -> None:
        with db.session() as session:
            note = session.get(Note, note_id)
            seen.append("missing" if note is None else note.body)

    @app.put("/notes/{note_id}")
    def update(note_id: int, body: dict[str, str], tasks: BackgroundTasks,
               session: Annotated[RoutingSession, Depends(committing_session,
                                                           scope="function")]) -> None:
        note = session.get(Note, note_id)
        assert note is not None
        note.body = body["body"]
        tasks.add_task(read_back, note_id)

    with db.session() as s:
        note = Note(body="start")
        s.add(note)
        s.commit()
        note_id = note.id
    token = db.commit_token()
    assert token is not None
    db.forget_commits()
    with TestClient(app) as client:
        client.cookies.set("aurora_commit", token)
        for n in range(ROUNDS[db.dialect.name]):
            response = client.put(f"/notes/{note_id}", json={"body": str(n)})
            assert response.status_code == 200
            assert "aurora_commit=" in response.headers["set-cookie"]
    assert seen == [str(n) for n in range(ROUNDS[db.dialect.name])]


def test_a_request_does_not_wait_for_the_commits_of_the_last_one(db: Database) -> None:
    """A WSGI thread serves request after request: the next client's request, carrying no
    token, must neither wait for this one's commit nor be sent to the writer for it."""
    app = httpx.Client(transport=httpx.WSGITransport(app=flask_app(db)),
                       base_url="http://testserver")
    note_id = app.post("/notes").json()["id"]
    app.cookies.clear()
    assert db._router.commits.current() is None  # nothing left in this thread's context
    before = db.stats()
    app.get(f"/notes/{note_id}")
    after = db.stats()
    assert after["ryw_waits"] == before["ryw_waits"]
    assert after["reads_on_readers"] == before["reads_on_readers"] + 1


def test_a_unit_of_work_is_shared_by_the_threads_it_starts(db: Database) -> None:
    """A script or a task: work done in threads started inside the unit (with its context)
    counts for every read of the unit; the unit's token carries it on; it ends with the unit."""
    rounds = ROUNDS[db.dialect.name]
    with db.unit_of_work() as unit:
        for n in range(rounds):
            def write(body: str = f"unit {n}") -> None:
                with db.session() as s:
                    s.add(Note(body=body))
            worker = threading.Thread(target=contextvars.copy_context().run, args=(write,))
            worker.start()
            worker.join()
            with db.session() as s:
                assert s.scalar(select(Note.id).where(Note.body == f"unit {n}")) is not None
        token = unit.token
    assert token is not None and db.commit_token() is None
    with db.session(after=token) as s:
        assert s.scalar(select(Note.id).where(Note.body == f"unit {rounds - 1}")) is not None


def test_a_session_sees_its_own_commit_from_any_context(db: Database) -> None:
    """Read-your-writes follows the session: a read through it in a context that never saw
    the commit (another thread, no copy of this context) still sees it."""
    for n in range(ROUNDS[db.dialect.name]):
        with db.session() as s:
            note = Note(body=f"own {n}")
            s.add(note)
            s.commit()
            note_id = note.id
            db.forget_commits()  # this context forgets; the session does not
            found: list[str | None] = []

            def look(session: RoutingSession = s, wanted: int = note_id,
                     into: list[str | None] = found) -> None:
                row = session.get(Note, wanted)
                into.append(None if row is None else row.body)

            session_thread = threading.Thread(target=look)
            session_thread.start()
            session_thread.join()
            assert found == [f"own {n}"]


def test_a_sessions_own_commit_is_read_on_the_writer_at_once(db: Database) -> None:
    """Not waiting for a reader: the data is hot on the writer."""
    with db.session() as s:
        note = Note(body="hot")
        s.add(note)
        s.commit()
        db.forget_commits()
        before = db.stats()
        assert where(s)[0] is False  # read where the commit is: the writer
        after = db.stats()
    assert after["ryw_own_on_writer"] == before["ryw_own_on_writer"] + 1
    assert after["ryw_waits"] == before["ryw_waits"]


def test_process_scope_lets_a_test_read_what_a_request_wrote(engine_cluster: LocalCluster,
                                                              db: Database) -> None:
    """``AURORA_RYW_SCOPE=process``: a commit in a server thread is seen by the test thread."""
    shared = Database.from_env({**engine_cluster.env(), "AURORA_RYW_SCOPE": "process"})
    try:
        with TestClient(fastapi_app(shared)) as client:
            for n in range(ROUNDS[db.dialect.name]):
                note_id = client.post("/notes", json={"body": f"p{n}"}).json()["id"]
                with shared.session() as s:  # this thread, which committed nothing
                    note = s.get(Note, note_id)
                    assert note is not None and note.body == f"p{n}"
    finally:
        shared.close()


def test_a_unit_of_work_refuses_a_token_that_is_not_ours(db: Database) -> None:
    with pytest.raises(ValueError, match="not an aurora-access commit token"):
        db.unit_of_work(after="nope")


def test_a_commit_after_the_response_started_is_reported(db: Database,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """FastAPI runs a ``yield`` dependency's exit after the response (default scope): a commit
    there cannot put its token on the response. Said once, plainly, instead of silently."""
    app = FastAPI()
    app.add_middleware(CommitTokenMiddleware, db=db)

    def late_session() -> Iterator[RoutingSession]:
        with db.session() as session:  # commits at exit: after the response here
            yield session

    @app.post("/late")
    def late(session: Annotated[RoutingSession, Depends(late_session)]) -> None:
        session.add(Note(body="late"))

    with TestClient(app) as client, caplog.at_level(logging.WARNING, logger="aurora_access"):
        responses = [client.post("/late") for _ in range(3)]
    assert all("set-cookie" not in r.headers for r in responses)
    late_warnings = [r for r in caplog.records if "after its response had started" in r.message]
    assert len(late_warnings) == 1


def test_commits_through_the_writer_engine_count_too(db: Database) -> None:
    """Core, ``create_all`` and Alembic commit on ``db.engine("writer")``, not through a
    session: the next session read in that context must see what they did (a table made a
    moment ago, a row inserted with Core), though the readers lag."""
    for n in range(ROUNDS[db.dialect.name] // 3):
        with db.engine("writer").begin() as conn:
            conn.execute(Note.__table__.insert().values(body=f"core {n}"))  # type: ignore[attr-defined]
        with db.session() as s:
            assert s.scalar(select(Note.id).where(Note.body == f"core {n}")) is not None
        db.forget_commits()
        table = f"web_fresh_{db.dialect.name}_{n}"
        with db.engine("writer").begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            conn.exec_driver_sql(f"CREATE TABLE {table} (id int)")
        with db.session() as s:
            assert s.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0


def test_a_session_commit_is_recorded_once(db: Database) -> None:
    """Sessions record their own commits; the writer engine's commit listener is not theirs."""
    with db.session() as s:
        s.add(Note(body="once"))
        s.commit()
        own = s.own_commit
    assert db._router.commits.current() is own


def test_every_way_to_a_session_gives_the_application_class(engine_cluster: LocalCluster,
                                                            db: Database) -> None:
    import sqlmodel  # noqa: PLC0415 - SQLModel only here

    settle(db)  # the notes table on every reader

    class ProjectSession(sqlmodel.Session):
        """A project's own subclass, with a helper of its own."""

        def note_count(self) -> int:
            return len(self.exec(sqlmodel.select(Note.id)).all())

    shop = Database.from_env(engine_cluster.env(), session_class=ProjectSession)
    try:
        made: list[Any] = []
        for context in (shop.session(), shop.read_only(), shop.read_only(snapshot=True),
                        shop.writer()):
            with context as s:
                made.append(s)
                assert s.note_count() >= 0
        with shop.sessionmaker() as s:
            made.append(s)
        made.append(shop.run_transaction(lambda s: s))
        assert all(isinstance(s, ProjectSession) and isinstance(s, RoutingSession)
                   for s in made), [type(s) for s in made]
        assert shop.session_class.__name__.endswith(".ProjectSession]")
    finally:
        shop.close()
    with pytest.raises(TypeError, match="session_class must be a subclass"):
        Database.from_env(engine_cluster.env(), session_class=dict)  # type: ignore[arg-type]
