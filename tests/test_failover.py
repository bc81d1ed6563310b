"""Failover handling on real clusters, PostgreSQL and MariaDB: retries, replays, commit
outcomes (issues 4 and 6)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import func, insert, select, text

from aurora_access import Database, RoutingSession, TransactionReplayRequired
from aurora_access.demo.models import Customer, Order, Stock
from aurora_access.demo.shop import create_schema, place_order, seed
from aurora_access.local import LocalCluster
from engines import settle, where


@pytest.fixture
def cluster(failover_cluster: LocalCluster) -> LocalCluster:
    return failover_cluster


@pytest.fixture
def db(cluster: LocalCluster) -> Iterator[Database]:
    database = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "0.5"})
    create_schema(database.engine("writer"))
    with database.writer() as s:
        seed(s)
    settle(database)
    database.forget_commits()  # reads spread over the readers as in a new request
    yield database
    database.close()


def test_a_read_on_a_crashed_reader_is_retried_elsewhere(
        db: Database, cluster: LocalCluster) -> None:
    with db.session() as s:  # warm both readers' pools
        for _ in range(4):
            where(s)
    victim = cluster.readers[0]
    cluster.crash(victim.id)
    try:
        for _ in range(10):
            with db.session() as s:
                on_reader, instance = where(s)
                assert on_reader and instance != victim.id
        assert db.stats()["retries"] >= 1
    finally:
        cluster.restart(victim.id)


@pytest.mark.parametrize("entry", ["exec", "get", "scalars", "lazy refresh"])
def test_every_entry_point_of_an_application_session_class_is_retried(
        cluster: LocalCluster, entry: str) -> None:
    """``session_class=sqlmodel.Session``: SQLModel's ``exec`` calls ``Session.execute`` past
    any subclass's ``execute``; the retry must hold there, and on ``get``, ``scalars`` and the
    reload of an expired object, all through the one door SQLAlchemy has."""
    import sqlmodel  # noqa: PLC0415 - SQLModel only here

    db = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "0.5"},
                           session_class=sqlmodel.Session)
    try:
        create_schema(db.engine("writer"))
        with db.writer() as s:
            seed(s)
        settle(db)
        db.forget_commits()
        with db.session() as s:
            assert isinstance(s, sqlmodel.Session) and isinstance(s, RoutingSession)
            for _ in range(4):  # connections to both readers in their pools
                where(s)
            customer = s.get(Customer, 1)
            assert customer is not None
            s.expire(customer)
        victim = cluster.readers[0]
        cluster.crash(victim.id)
        try:
            for _ in range(6):
                with db.session() as s:
                    if entry == "exec":
                        query = sqlmodel.select(Customer).where(Customer.id == 1)
                        assert s.exec(query).one().id == 1
                    elif entry == "get":
                        assert s.get(Customer, 2) is not None
                    elif entry == "scalars":
                        assert len(s.scalars(select(Customer.id).limit(3)).all()) == 3
                    else:
                        s.add(customer)
                        s.expire(customer)
                        assert customer.name  # reloaded through the session
                    assert s.last_instance is not None and s.last_instance.id != victim.id
            assert db.stats()["retries"] >= 1
        finally:
            cluster.restart(victim.id)
    finally:
        db.close()


def test_a_reader_down_at_start_does_not_turn_off_log_positions(cluster: LocalCluster) -> None:
    """Its silence says nothing about whether instances tell log positions: another reader is
    asked (a MariaDB cluster, like Aurora, keeps a crashed reader in its topology)."""
    victim = cluster.readers[0]
    cluster.crash(victim.id)
    try:
        db = Database.from_env(cluster.env())
        try:
            db.topology()  # the first use connects and looks for log positions
            assert db._router.lag_mode is False
        finally:
            db.close()
    finally:
        cluster.restart(victim.id)


def test_a_write_transaction_cut_by_a_failover_must_be_replayed(
        db: Database, cluster: LocalCluster) -> None:
    old = cluster.writer
    with pytest.raises(TransactionReplayRequired) as caught, db.session() as s:
        customer = s.get(Customer, 1, with_for_update=True)
        assert customer is not None
        customer.name = "lost in failover"
        s.flush()
        cluster.failover()
        s.execute(text("SELECT 1"))
    assert caught.value.instance == old.id
    new = db.topology().writer
    assert new.id == cluster.writer.id != old.id
    assert db.stats()["failovers"] == 1
    with db.session() as s:
        assert s.get(Customer, 1).name != "lost in failover"  # type: ignore[union-attr]
        s.get(Customer, 1).name = "after failover"  # type: ignore[union-attr]
    with db.writer() as s:  # written through the new writer, not the stale endpoint
        assert where(s) == (False, new.id)
        assert s.get(Customer, 1).name == "after failover"  # type: ignore[union-attr]
    deadline = time.monotonic() + 5  # the old writer comes back as a reader, and is one
    while old.id not in {r.id for r in db.topology().readers}:
        assert time.monotonic() < deadline, db.topology()
        time.sleep(0.05)
    assert db.topology().writer.id == new.id


@pytest.mark.parametrize("how", ["core insert", "orm flush", "run_transaction"])
def test_the_first_write_after_a_failover_just_runs(db: Database, cluster: LocalCluster,
                                                   how: str) -> None:
    """Right after a failover the library has not noticed (its monitor is slow here), the
    first statement of a write transaction meets the crashed writer: nothing of the
    transaction ran and nothing reached the caller, so it runs on the new writer, unseen."""
    slow = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "60"})
    try:
        for trial in range(5):
            with slow.session() as s:  # a pooled connection to the writer
                s.get(Customer, 1, with_for_update=True).name = f"before {trial}"  # type: ignore[union-attr]
            old = cluster.writer
            cluster.failover(wait_for_old_writer=False)
            new_id = 9100 + 10 * ["core insert", "orm flush", "run_transaction"].index(how) + trial
            row = {"id": new_id, "email": f"first-{new_id}@example.com", "name": how}
            if how == "core insert":
                with slow.session() as s:
                    s.execute(insert(Customer).values(**row))
            elif how == "orm flush":
                with slow.session() as s:
                    s.add(Customer(**row))
            else:
                slow.run_transaction(lambda s, r=row: s.add(Customer(**r)), max_attempts=1)
            with slow.writer() as s:
                assert s.get(Customer, new_id).name == how  # type: ignore[union-attr]
                assert where(s)[1] == cluster.writer.id != old.id
            cluster.rejoin(old.id)
    finally:
        slow.close()


def test_reads_on_the_writer_never_reach_the_old_writer_back_as_a_reader(
        cluster: LocalCluster) -> None:
    """The monitor has not seen the failover yet (its refresh is slow) and the old writer is
    back, as a reader: new connections to the host the topology still has for the writer must
    not serve the writer's reads there (they would be stale by the new writer's lag)."""
    slow = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "60"})
    try:
        with slow.writer() as s:  # pooled connections to the writer
            assert where(s) == (False, cluster.writer.id)
        old = cluster.writer
        cluster.failover()  # returns once the old writer streams as a reader
        with slow.writer() as s:
            assert where(s) == (False, cluster.writer.id) != (False, old.id)
        with slow.session() as s:  # a read-your-writes fallback reads on the writer too
            s.execute(text("SELECT 1"))
        assert slow.topology().writer.id == cluster.writer.id
    finally:
        slow.close()


def test_a_flush_after_a_statement_ran_must_be_replayed(db: Database,
                                                        cluster: LocalCluster) -> None:
    """Once a statement of the write transaction has run (a row locked, read back to the
    caller), the transaction cannot move: SQLAlchemy rolls the session back inside the failed
    flush, and the caller is told to replay."""
    slow = Database.from_env({**cluster.env(), "AURORA_TOPOLOGY_REFRESH_S": "60"})
    old = cluster.writer
    try:
        with pytest.raises(TransactionReplayRequired) as caught, slow.session() as s:
            s.get(Customer, 1, with_for_update=True).name = "locked first"  # type: ignore[union-attr]
            s.add(Customer(id=9001, email="flush@example.com", name="cut flush"))
            cluster.failover(wait_for_old_writer=False)
            s.flush()
        assert caught.value.instance == old.id
        with slow.session() as s:
            s.add(Customer(id=9001, email="flush@example.com", name="replayed"))
        with slow.writer() as s:
            assert s.get(Customer, 9001).name == "replayed"  # type: ignore[union-attr]
    finally:
        slow.close()
        cluster.rejoin(old.id)


def test_commit_outcomes_are_read_on_the_new_writer(db: Database, cluster: LocalCluster) -> None:
    db.run_transaction(lambda s: s.get(Customer, 2))  # makes the marker table
    insert = "INSERT INTO aurora_access_commit_markers (id) VALUES (%(id)s)"
    with db.writer() as s:
        s.get(Customer, 2).name = "committed before failover"  # type: ignore[union-attr]
        s.connection().exec_driver_sql(insert, {"id": "committed-marker"})
    s2 = db.sessionmaker(mode="writer")
    s2.get(Customer, 3).name = "rolled back"  # type: ignore[union-attr]
    s2.connection().exec_driver_sql(insert, {"id": "aborted-marker"})
    s2.rollback()
    s2.close()
    cluster.failover()
    assert db.resolve_commit_outcome("committed-marker") == "committed"
    assert db.resolve_commit_outcome("aborted-marker") == "aborted"
    assert db.topology().writer.id == cluster.writer.id


def test_a_commit_cut_off_is_resolved_and_replayed(
        db: Database, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    commit_statements = db.dialect.commit_with_marker_statements

    def fail_over_first(marker: str) -> list[str]:
        if len(runs) == 1:  # the writer goes away right before INSERT marker + COMMIT is sent
            cluster.failover(wait_for_old_writer=False)
        return commit_statements(marker)

    def order(s: RoutingSession) -> str:
        runs.append(where(s)[1])
        return place_order(s, customer_id=5, items={5: 1}, order_id=f"cut-{len(runs)}")

    monkeypatch.setattr(db.dialect, "commit_with_marker_statements", fail_over_first)
    crashed_writer = cluster.writer.id
    order_id = db.run_transaction(order)
    assert order_id == "cut-2" and runs[0] == crashed_writer != runs[1]
    with db.writer() as s:
        assert s.scalars(select(Order.id).where(Order.id.like("cut-%"))).all() == ["cut-2"]
    cluster.rejoin(crashed_writer)


def test_run_transaction_places_every_order_exactly_once_across_a_failover(
        db: Database, cluster: LocalCluster) -> None:
    with db.session() as s:
        stock_before = s.scalar(select(func.sum(Stock.quantity)))
        orders_before = s.scalar(select(func.count()).select_from(Order))
    placed: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def shopper(n: int) -> None:
        while not stop.is_set():
            order_id = str(uuid.uuid4())
            try:
                placed.append(db.run_transaction(
                    lambda s, oid=order_id: place_order(s, customer_id=n + 1,
                                                        items={n + 1: 1}, order_id=oid),
                    max_attempts=5))
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    report = cluster.failover()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not failures, failures[:3]
    with db.writer() as s:
        ids = s.scalars(select(Order.id)).all()
        assert len(ids) == len(set(ids))
        assert set(placed) <= set(ids)
        assert len(ids) - (orders_before or 0) == len(placed)
        assert s.scalar(select(func.sum(Stock.quantity))) == (stock_before or 0) - len(placed)
    print(f"\n{len(placed)} orders placed across {report}; stats {db.stats()}")


def test_a_paused_writer_is_noticed_within_the_bound(cluster: LocalCluster) -> None:
    """A hung host (SIGSTOP) acknowledges TCP but never answers: without a heartbeat a query
    on it would wait for the OS's minutes."""
    env = {**cluster.env(), "AURORA_HUNG_TIMEOUT_S": "1.5", "AURORA_TOPOLOGY_REFRESH_S": "0.5",
           "AURORA_FAILOVER_TIMEOUT": "2", "AURORA_CONNECT_TIMEOUT": "1"}
    db = Database.from_env(env)
    outcome: list[tuple[float, BaseException]] = []
    paused = threading.Event()
    paused_at = 0.0

    def busy_writer() -> None:
        while True:
            try:
                with db.writer() as s:
                    s.execute(text("SELECT 1")).one()
            except Exception as exc:
                outcome.append((time.monotonic() - paused_at, exc))
                return
            if paused.is_set():
                time.sleep(0.01)

    try:
        thread = threading.Thread(target=busy_writer)
        thread.start()
        time.sleep(0.3)
        writer = cluster.writer
        cluster.pause(writer.id)
        paused_at = time.monotonic()
        paused.set()
        deadline = paused_at + 10
        while db.stats()["writer_heartbeat_failures"] == 0:
            assert time.monotonic() < deadline, "the hung writer was never noticed"
            time.sleep(0.05)
        noticed_after = time.monotonic() - paused_at
        assert noticed_after <= 1.5 + 0.5 + 0.5  # hung timeout + one refresh + slack
        thread.join(15)
        assert outcome, "the blocked caller never got an answer"
        failed_after, error = outcome[0]
        # + failover timeout + slack; + one connect timeout when the cut caught the caller
        # returning its connection (the pool's ROLLBACK fails quietly) and its next statement
        # had to open a new connection to the hung host
        assert failed_after <= noticed_after + 2 + 1 + 2.5
        print(f"\npaused writer noticed after {noticed_after:.2f} s; the blocked caller got "
              f"{type(error).__name__} after {failed_after:.2f} s")
    finally:
        cluster.resume(writer.id)
    with db.writer() as s:  # the same writer, found again once it answers
        assert where(s) == (False, writer.id)
    db.close()


def test_a_paused_reader_costs_a_bounded_wait_and_no_error(cluster: LocalCluster) -> None:
    """A read hung on it is cut after the hung timeout (+ one refresh) and retried elsewhere; a
    read that has to open a connection to it waits for the connect timeout instead."""
    env = {**cluster.env(), "AURORA_HUNG_TIMEOUT_S": "1", "AURORA_TOPOLOGY_REFRESH_S": "0.3",
           "AURORA_CONNECT_TIMEOUT": "2"}
    db = Database.from_env(env)
    victim = cluster.readers[0]
    try:
        with db.session() as s:  # both readers have pooled connections
            for _ in range(4):
                where(s)
        cluster.pause(victim.id)
        slowest, seen = 0.0, Counter[str]()
        for _ in range(30):
            began = time.monotonic()
            with db.session() as s:
                seen[where(s)[1]] += 1
            slowest = max(slowest, time.monotonic() - began)
        assert seen[victim.id] == 0 and sum(seen.values()) == 30
        assert slowest <= max(2, 1 + 0.3) + 1.0  # connect or hung timeout + refresh, + slack
        print(f"\npaused reader: slowest read {slowest:.2f} s, then {dict(seen)}")
    finally:
        cluster.resume(victim.id)
        db.close()
