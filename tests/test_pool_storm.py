"""200 threads against small pools (issue 12): callers that wait too long get an aurora-access
error naming the instance, its role and the pool settings; reads that wait for read-your-writes
and writes competing for the same pools do not deadlock; nothing is held after the storm,
counted on the servers themselves."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

from sqlalchemy import text

from aurora_access import Database, PoolExhausted
from aurora_access.local import LocalCluster
from engines import settle

THREADS = 200
ROUNDS = 2
HOLD_S = 0.2  # each write transaction holds its connection this long
UPDATE = text("UPDATE storm SET v = :v WHERE id = :id")
READ = text("SELECT v FROM storm WHERE id = :id")

_APP_CONNECTIONS = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE user = 'app'",
}


def server_connections(cluster: LocalCluster) -> int:
    """The application user's connections, counted by every instance, summed."""
    total = 0
    for instance in cluster.instances:
        from sqlalchemy import create_engine  # noqa: PLC0415

        engine = create_engine(cluster.admin_url(instance.id))
        try:
            with engine.connect() as conn:
                total += int(conn.execute(text(_APP_CONNECTIONS[cluster.engine])).scalar() or 0)
        finally:
            engine.dispose()
    return total


def test_a_storm_on_small_pools(engine_cluster: LocalCluster) -> None:
    db = Database.from_env({**engine_cluster.env(), "AURORA_POOL_SIZE": "5",
                            "AURORA_MAX_OVERFLOW": "5", "AURORA_POOL_TIMEOUT": "2",
                            "AURORA_RYW_WAIT_MS": "2000"})
    try:
        with db.engine("writer").begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS storm"))
            conn.execute(text("CREATE TABLE storm (id int PRIMARY KEY, v varchar(40))"))
            conn.execute(text("INSERT INTO storm VALUES (:id, '-')"),
                         [{"id": n} for n in range(THREADS)])
        settle(db)
        db.forget_commits()
        with db.session() as s:  # every pool in use once, so that "before" counts them
            s.execute(text("SELECT 1"))
        time.sleep(1.5)  # the monitor's probes made too
        before = server_connections(engine_cluster)
        ours_before = pooled(db)

        waits: list[float] = []
        outcomes: Counter[str] = Counter()
        errors: list[str] = []
        start = threading.Barrier(THREADS)

        def shopper(n: int) -> None:
            start.wait()
            for round_ in range(ROUNDS):
                began = time.monotonic()
                try:
                    with db.session() as s:  # a write that holds its connection a while
                        s.execute(UPDATE, {"id": n, "v": f"{n}/{round_}"})
                        with db.session() as nested:  # a read meanwhile, in another session
                            nested.execute(READ, {"id": (n + 1) % THREADS}).scalar()
                        time.sleep(HOLD_S)
                    with db.session() as s:  # read-your-writes: waits for a reader
                        assert s.execute(READ, {"id": n}).scalar() == f"{n}/{round_}"
                    outcomes["done"] += 1
                except PoolExhausted as error:
                    outcomes[f"PoolExhausted ({error.role})"] += 1
                    errors.append(str(error))
                except Exception as error:
                    outcomes[type(error).__name__] += 1
                    errors.append(f"{type(error).__name__}: {error}")
                waits.append(time.monotonic() - began)
                db.forget_commits()

        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(THREADS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        took = time.monotonic() - began
        assert not any(t.is_alive() for t in threads), "deadlocked"
        time.sleep(0.5)
        after_pools = pooled(db)
        after = server_connections(engine_cluster)
        ordered = sorted(waits)
        print(f"\n{engine_cluster.engine}: {THREADS} threads x {ROUNDS} rounds in {took:.1f} s: "
              f"{dict(outcomes)}; per round p50 {statistics.median(ordered):.2f} s, p99 "
              f"{ordered[int(len(ordered) * 0.99)]:.2f} s; app connections on the servers "
              f"{before} before, {after} after; our pools {ours_before} -> {after_pools}")
        assert set(outcomes) <= {"done", "PoolExhausted (writer)", "PoolExhausted (reader)"}, \
            errors[:3]
        assert outcomes["done"] > 0 and outcomes["PoolExhausted (writer)"] > 0
        exhausted = next(e for e in errors if "writer" in e)
        for part in ("AURORA_POOL_TIMEOUT=2", "AURORA_POOL_SIZE=5", "AURORA_MAX_OVERFLOW=5",
                     f"the writer {db.topology().writer.id}"):
            assert part in exhausted, exhausted
        # nothing held: every pool idle, at most its size, and the servers agree
        assert all(p["out"] == 0 and p["idle"] <= p["size"] for p in after_pools.values()), \
            after_pools
        idle_after = sum(p["idle"] for p in after_pools.values())
        idle_before = sum(p["idle"] for p in ours_before.values())
        assert after - before == idle_after - idle_before
    finally:
        db.close()


def pooled(db: Database) -> dict[str, dict[str, int]]:
    """Each of the Database's pools: connections in use, idle, and its size."""
    return {f"{key[0]} {key[2]}": {"out": engine.pool.checkedout(),  # type: ignore[attr-defined]
                                   "idle": engine.pool.checkedin(),  # type: ignore[attr-defined]
                                   "size": engine.pool.size()}  # type: ignore[attr-defined]
            for key, engine in db._pools._engines.items()}


