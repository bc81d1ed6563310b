"""Aurora PostgreSQL (and plain PostgreSQL) through psycopg 3: every piece of its SQL."""

from __future__ import annotations

from typing import Any


class PostgresDialect:
    name = "postgresql"
    drivername = "postgresql+psycopg"

    # Aurora's view of the cluster; rows not updated for 5 minutes are instances gone.
    topology_sql = (
        "SELECT server_id, session_id = 'MASTER_SESSION_ID', replica_lag_in_msec "
        "FROM pg_catalog.aurora_replica_status() "
        "WHERE session_id = 'MASTER_SESSION_ID' OR last_update_timestamp IS NULL "
        "OR last_update_timestamp > now() - interval '300 seconds'"
    )
    has_topology_sql = (
        "SELECT to_regprocedure('pg_catalog.aurora_replica_status()') IS NOT NULL"
    )
    is_reader_sql = "SELECT pg_is_in_recovery()"
    instance_id_sql = "SELECT pg_catalog.aurora_db_instance_identifier()"
    # Read after COMMIT returns, this covers the commit (synchronous_commit must not be off).
    writer_position_sql = "SELECT pg_current_wal_lsn()"
    # NULL on a writer; on a reader, what it has replayed and so what a new snapshot sees.
    replica_position_sql = "SELECT pg_last_wal_replay_lsn()"

    def parse_position(self, value: Any) -> int | None:
        """An LSN (``'16/B374D848'``) as an integer; None stays None."""
        if value is None:
            return None
        high, _, low = str(value).partition("/")
        if not low:
            raise ValueError(f"not a PostgreSQL LSN: {value!r}")
        return (int(high, 16) << 32) | int(low, 16)

    def format_position(self, position: int) -> str:
        return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"

    def connect_args(self, sslmode: str, sslrootcert: str | None,
                     connect_timeout: float) -> dict[str, Any]:
        args: dict[str, Any] = {
            "sslmode": sslmode,
            "connect_timeout": max(1, round(connect_timeout)),
            # a dead peer is noticed in seconds, not after the kernel's two hours
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 2,
        }
        if sslrootcert:
            args["sslrootcert"] = sslrootcert
        return args
