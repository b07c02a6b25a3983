"""The shared queue on PostgreSQL, in process: claims in the fair order, leases that expire,
claims handed back, cancels across nodes (two queues on one database stand for two nodes)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import AppFactory, generate, render, wait_done
from pgtest import fresh_database
from server.jobs.cluster import ClusterQueue
from server.jobs.failures import caller_gone_error, gave_up_error
from server.store import Store
from server.store.cluster import ClusterStore


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def add_job(store: Store, user_id: int, request_id: str) -> int:
    return store.insert_generation(request_id, "p", {"r": 1}, 1, False, 1.0, user_id, 0.0)


def queue(store: Store, node: str, lease: float = 30.0) -> ClusterQueue:
    return ClusterQueue(
        ClusterStore(store, node, lease), lambda row: (None, None), 3, gave_up_error(3)
    )


def test_claims_follow_the_fair_order_and_skip_each_others_rows(database_url: str) -> None:
    store = Store(database_url)
    try:
        store.fetch_all("SELECT 1")
        with store.transaction() as db:
            db.execute(
                "INSERT INTO users (id, name, unlimited, created_at) VALUES (2, 'b', 1, 0)"
            )
        a = [add_job(store, 1, f"a{i}") for i in range(3)]
        b = [add_job(store, 2, f"b{i}") for i in range(2)]
        one, two = queue(store, "one"), queue(store, "two")
        taken = []
        for node in (one, two, one, two, one):
            batch = node.take(timeout=0)
            assert len(batch) == 1
            taken.append(batch[0].generation_id)
            node.done()
        assert taken == [a[0], b[0], a[1], b[1], a[2]]
        assert one.take(timeout=0) == [] and two.take(timeout=0) == []
        found = store.fetch_all("SELECT id, node_id FROM generations")
        rows = {r["id"]: r["node_id"] for r in found}
        assert [rows[i] for i in taken] == ["one", "two", "one", "two", "one"]
    finally:
        store.close()


def test_an_expired_lease_returns_the_job_and_counts_the_try(database_url: str) -> None:
    store = Store(database_url)
    try:
        job = add_job(store, 1, "x")
        dead, alive = queue(store, "dead", lease=0.5), queue(store, "alive")
        store.node_id = "dead"
        assert [p.generation_id for p in dead.take(timeout=0)] == [job]
        assert store.mark_processing(job)
        assert alive.take(timeout=0) == []
        time.sleep(0.7)
        assert alive.cluster.has_expired()
        assert alive.cluster.reclaim(3, gave_up_error(3)) == 1
        row = store.generation_by_id(job)
        assert row and row["status"] == "pending" and row["attempts"] == 1
        assert [p.generation_id for p in alive.take(timeout=0)] == [job]
        # the dead node, back, can no longer complete or release the job
        assert not store.complete(job, [], 0.0, 0.0, [])
    finally:
        store.close()


def test_a_stopping_node_hands_its_claims_back(database_url: str) -> None:
    store = Store(database_url)
    try:
        job = add_job(store, 1, "x")
        one = queue(store, "one")
        one.take(timeout=0)
        assert store.generation_by_id(job)["node_id"] == "one"  # type: ignore[index]
        one.shutdown()
        assert store.generation_by_id(job)["node_id"] is None  # type: ignore[index]
        assert [p.generation_id for p in queue(store, "two").take(timeout=0)] == [job]
    finally:
        store.close()


def test_one_node_on_postgres_renders_cancels_and_reports_itself(
    make_client: AppFactory, tmp_path: Path
) -> None:
    client = make_client(node_id="node-a")
    body = render(client)
    assert body["images"]
    health = client.get("/health").json()
    assert health["node"] == "node-a"
    assert [n["id"] for n in health["nodes"]] == ["node-a"]
    assert health["nodes"][0]["seconds_since_heartbeat"] < 5
    text = client.get("/metrics").text
    assert 'darkroom_node_info{node="node-a"} 1.0' in text
    # Every sample names its node: one Prometheus scrapes every node of the cluster.
    # The shared database's figures, reported by the live node with the smallest id.
    assert 'darkroom_queue_depth{node="node-a",scope="cluster"}' in text
    jobs = 'darkroom_jobs_total{code="",node="node-a",scope="cluster",status="completed"} 1.0'
    assert jobs in text
    slow = generate(client, settings={"steps": 150})["request_id"]
    deadline = time.monotonic() + 60
    while client.get(f"/generations/{slow}/status").json()["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.post(f"/generations/{slow}/cancel")
    assert wait_done(client, slow)["error"]["code"] == "CANCELLED"


def test_a_restarting_node_cancels_only_its_own_blocking_calls(database_url: str) -> None:
    """A blocking call's caller waits on the node that admitted it: when that node starts
    anew its callers are gone (cancelled, uncharged); other nodes' callers still wait."""
    store = Store(database_url)
    try:
        jobs = {
            caller: store.insert_generation(
                f"r-{caller}", "p", {"r": 1}, 1, False, 1.0, 1, 0.0, caller_node=caller
            )
            for caller in ("one", "two")
        }
        polled = add_job(store, 1, "polled")
        store.node_id = "one"
        claimed = queue(store, "one").take(timeout=0)
        assert [p.generation_id for p in claimed] == [jobs["one"]]
        restarted = ClusterStore(store, "one", 30.0)
        assert restarted.reclaim(3, gave_up_error(3), own=True, caller_gone=caller_gone_error())
        mine = store.generation_by_id(jobs["one"])
        assert mine and mine["status"] == "failed"
        assert json.loads(mine["error_json"])["details"]["reason"] == "caller_gone"
        for other in (jobs["two"], polled):
            row = store.generation_by_id(other)
            assert row and row["status"] == "pending"
    finally:
        store.close()
