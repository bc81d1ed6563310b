"""What IAM costs a new connection: password vs IAM token cached vs IAM token signed each time.

Run: .venv/bin/python benchmarks/iam_connect.py [--connects 100] [--rounds 5]

One local PostgreSQL cluster with TLS (IAM needs it; verify-full against the cluster's CA),
under a frozen clock so that the token boto3 signs for the writer is the same every time and
the role's password can be set to it (the server then accepts it, as Aurora accepts a valid
signature). The local server checks every password, token included, with SCRAM, whose cost
grows with the password's length (a token is about 1000 characters); Aurora checks a token in
clear inside TLS, so "cached" vs "password" here overstates what a token costs on Aurora, and
"signed each time" vs "cached" is the cost of signing. Three cases, interleaved round by
round, each ``--connects`` new connections to the writer through the library's own
credentials:

- password: the application role's password (scram-sha-256), as any SQLAlchemy app logs in;
- IAM, cached: ``IamTokens`` hands out the token it holds (what every connection but the first
  of each 10 minutes does);
- IAM, signed each time: the cache is emptied before every connection (what a library without
  a cache pays: the peer's issue #1230 was about the other side of this, a cache never renewed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import time_machine

from aurora_access.auth import IamTokens
from aurora_access.local import LocalCluster, free_port

FROZEN = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with LocalCluster(readers=0, port=free_port(0), tls=True) as cluster, \
            time_machine.travel(FROZEN, tick=False):
        writer = cluster.writer
        tokens = IamTokens(cluster.user, "us-east-1")
        token = tokens.token(writer.host, cluster.port)
        conninfo = (f"host={writer.host} port={cluster.port} dbname={cluster.database} "
                    f"user={cluster.user} sslmode=verify-full sslrootcert={cluster.ca_cert}")
        password = cluster.password

        def connect(secret: Callable[[], str]) -> None:
            psycopg.connect(conninfo, password=secret()).close()

        def signed() -> str:
            tokens.renew(writer.host, cluster.port)
            return tokens.token(writer.host, cluster.port)

        def set_password(value: str) -> None:
            with psycopg.connect(host=writer.host, port=cluster.port, user="postgres",
                                 dbname="postgres", autocommit=True) as admin:
                admin.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    psycopg.sql.Identifier(cluster.user), psycopg.sql.Literal(value)))

        cases: dict[str, tuple[str, Callable[[], str]]] = {
            "password (scram), TLS verify-full": (password, lambda: password),
            "IAM token, cached": (token, lambda: tokens.token(writer.host, cluster.port)),
            "IAM token, signed for each connection": (token, signed),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (server_password, secret) in cases.items():
                set_password(server_password)
                connect(secret)  # warm
                began = time.perf_counter()
                for _ in range(args.connects):
                    connect(secret)
                samples[name].append((time.perf_counter() - began) / args.connects)
        sign = []
        for _ in range(1000):
            began = time.perf_counter()
            signed()
            sign.append(time.perf_counter() - began)
    print(f"{args.rounds} rounds x {args.connects} new connections, median per connection")
    print("| case | ms per new connection |")
    print("|---|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values) * 1000:.2f} |")
    print(f"\nsigning one token (boto3 generate_db_auth_token, 1000 times): median "
          f"{statistics.median(sign) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
