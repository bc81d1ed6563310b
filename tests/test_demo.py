"""The demo: shop traffic through failovers, nothing lost, doubled or read stale (issue 7)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading
import time

import boto3
import pytest
from botocore.stub import Stubber
from rich.console import Console

from aurora_access import Settings
from aurora_access.demo import runner, view
from aurora_access.local import LocalCluster, free_port


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("api", ["threads", "async"])
@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_a_local_demo_loses_nothing_through_two_failovers(engine: str, api: str) -> None:
    out, live = io.StringIO(), io.StringIO()
    code = runner.run(_args("--duration", "5", "--failover-every", "2", "--threads", "4",
                            "--products", "2000", "--engine", engine, "--json", "--metrics",
                            *(["--async"] if api == "async" else [])),
                      environ={}, out=out, live=live)
    summary = json.loads(out.getvalue())
    assert code == 0, summary
    assert {"orders_placed", "orders_lost", "orders_doubled", "stale_reads", "failovers",
            "recovery_s"} <= set(summary)
    assert (summary["orders_lost"], summary["orders_doubled"], summary["stale_reads"]) == (0, 0, 0)
    assert summary["stock_consistent"] is True
    assert summary["failovers"] == 2
    assert all(r is not None and r < 5 for r in summary["recovery_s"]), summary["recovery_s"]
    assert summary["orders_placed"] > 50
    # a round reads about 3.5 times outside transactions (readers) and 4 times inside its cart
    # and checkout transactions (the writer): the two counts are close by design (measured
    # 0.77-1.5 over six 7 s runs, before and after issue 10; 5 s runs since); readers must
    # take their share
    assert summary["reads_on_readers"] > summary["reads_on_writer"] / 2 > 0
    assert "2,000 products" in live.getvalue()  # what was loaded, said on the live stream
    # --metrics: what an operator's exporter received, from every Database the run made
    metrics = summary["metrics"]
    assert metrics["aurora.failovers"]["total"] == 2
    assert metrics["aurora.writer_discovery.duration"]["total"] >= 1
    assert metrics["aurora.failover.duration"]["total"] == 2  # each failover's recovery
    routes = metrics["db.client.operation.duration"]["attributes"]["aurora.route"]
    assert {"read", "write"} <= set(routes)
    for name in ("db.client.connection.count", "db.client.connection.max",
                 "db.client.connection.pending_requests", "db.client.connection.wait_time",
                 "db.client.connection.create_time", "aurora.replica.lag",
                 "aurora.reads_on_readers"):
        assert metrics[name]["series"] >= 1, name


def test_against_a_configured_cluster_it_fails_over_through_rds_only_when_asked() -> None:
    with LocalCluster(readers=2, port=free_port()) as cluster:
        calls: list[str] = []

        class FakeRds:  # stands for AWS: the "RDS API" fails the local cluster over
            def failover_db_cluster(self, DBClusterIdentifier: str) -> dict[str, object]:
                calls.append(DBClusterIdentifier)
                cluster.failover()
                return {}

        out = io.StringIO()
        code = runner.run(_args("--duration", "2", "--threads", "2", "--products", "500",
                                "--json"), environ=cluster.env(), out=out, live=io.StringIO(),
                          rds_client=FakeRds())
        assert code == 0 and json.loads(out.getvalue())["failovers"] == 0 and calls == []
        out = io.StringIO()
        writer = cluster.writer.id
        code = runner.run(_args("--duration", "4", "--threads", "2", "--products", "500",
                                "--failover-every", "2", "--cluster-id", "shop", "--json"),
                          environ=cluster.env(), out=out, live=io.StringIO(),
                          rds_client=FakeRds())
        summary = json.loads(out.getvalue())
        assert code == 0 and calls == ["shop"] and cluster.writer.id != writer
        assert summary["failovers"] == 1 and summary["orders_lost"] == 0


def test_the_rds_cluster_id_comes_from_the_cluster_endpoint() -> None:
    settings = Settings(cluster_endpoint="shop.cluster-abc123.eu-west-1.rds.amazonaws.com",
                        database="app", user="app", password="pw", region="eu-west-1")
    client = boto3.client("rds", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="y")
    with Stubber(client) as stub:
        stub.add_response("failover_db_cluster", {"DBCluster": {}},
                          {"DBClusterIdentifier": "shop"})
        failovers = runner.aws_failovers(settings, None, client)
        assert "shop" in failovers.fail()
        stub.assert_no_pending_responses()


# -- the live view (issue 15): fast, no cluster --------------------------------------------

def _snapshot() -> view.Snapshot:
    return view.Snapshot(
        elapsed_s=42.4, duration_s=60.0, ops_per_s=1834.2, orders=123_456, stale_reads=0,
        reads_on_readers=456_789, reads_on_writer=432_109, p50_ms=12.34, p99_ms=1234.5,
        failovers=3, last_recovery_s=None)


def _rendered(width: int, snapshot: view.Snapshot) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(view.Board(snapshot))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [40, 80, 160])
def test_the_live_panel_fits_the_terminal_width(width: int) -> None:
    lines = _rendered(width, _snapshot())
    assert max(len(line) for line in lines) <= width
    text = "\n".join(lines)
    for shown in ("orders placed", "123,456", "stale reads", "456,789 / 432,109",
                  "12.3 / 1234.5 ms", "failovers", "recovering..."):
        assert shown in text, (shown, text)


def test_the_live_panel_reflows_wider_terminals_into_fewer_rows() -> None:
    assert len(_rendered(160, _snapshot())) < len(_rendered(80, _snapshot())) \
        < len(_rendered(40, _snapshot()))


def test_a_burst_of_identical_library_events_is_said_once() -> None:
    said: list[str] = []
    events = view.Events(lambda message, level: said.append(message), window_s=60)
    logger = logging.getLogger("aurora_access.tests.demo-burst")
    logger.propagate = False
    handler = view.EventHandler(events)
    logger.addHandler(handler)
    try:
        threads = [threading.Thread(target=logger.warning, args=(
            "writer %s failed (%s): looking for the writer", 11, "connection lost"))
            for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logger.warning("writer found at %s after %.3f s", "10.0.0.12", 0.2)
        events.flush()
        assert said == []  # the window is not over: more of the burst may come
        events.flush(force=True)
    finally:
        logger.removeHandler(handler)
    assert said == ["writer 11 failed (connection lost): looking for the writer (x8)",
                    "writer found at 10.0.0.12 after 0.200 s"]


def test_an_event_after_its_window_is_said_again() -> None:
    now = [0.0]
    said: list[str] = []
    events = view.Events(lambda message, level: said.append(message), window_s=1.0,
                         clock=lambda: now[0])
    events.add("writer 11 failed")
    now[0] = 0.5
    events.add("writer 11 failed")
    events.flush()
    assert said == []
    now[0] = 1.0
    events.flush()
    events.add("writer 11 failed")  # another failover: another event
    now[0] = 2.5
    events.flush()
    assert said == ["writer 11 failed (x2)", "writer 11 failed"]


def test_off_a_terminal_the_view_is_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich would colour even a StringIO with it
    monkeypatch.setattr(view, "PLAIN_PERIOD_S", 0.2)
    stream = io.StringIO()
    with view.Screen(stream, window_s=0.1) as screen:
        with screen.status("loading 2,000 products ..."):
            pass
        with screen.board(lambda window: _snapshot()):
            for _ in range(8):
                screen.events.add("writer 11 failed (connection lost): looking for the writer")
            time.sleep(0.7)
        screen.note("done")
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "demo: loading 2,000 products ..."
    assert lines[-1] == "demo: done"
    assert sum("looking for the writer (x8)" in line for line in lines) == 1
    assert sum("orders 123,456" in line for line in lines) >= 2  # a progress line each period


def test_on_a_terminal_events_print_above_the_panel_once() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=80, force_terminal=True, color_system=None)
    with view.Screen(stream, console=console, window_s=0.1) as screen, \
            screen.board(lambda window: _snapshot()):
        for _ in range(8):
            screen.events.add("writer 11 failed (connection lost): looking for the writer")
        time.sleep(0.5)
    text = stream.getvalue()
    assert text.count("looking for the writer (x8)") == 1
    assert "aurora-access demo" in text and "123,456" in text
