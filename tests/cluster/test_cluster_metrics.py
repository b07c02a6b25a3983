"""Cluster metrics add up: two nodes on one PostgreSQL database, each scraped; summing any
metric over both nodes' /metrics gives the true total, because what is read from the
shared database is reported by one node only (`scope="cluster"`)."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from conftest import AppFactory, generate, wait_done
from pgtest import engine_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
from fal_double import KEY, FalDouble  # noqa: E402

FAST = {"remote_poll": 0.05, "remote_retry_base": 0.01, "remote_retries": 3}


@pytest.fixture
def database_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """A fresh PostgreSQL database (dropped after the apps using it closed)."""
    with engine_url("postgresql", monkeypatch) as url:
        yield url


def samples(client: TestClient) -> list[tuple[str, dict[str, str], float]]:
    text = client.get("/metrics").text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def summed(*clients: TestClient) -> dict[tuple[str, tuple], float]:
    """Every series summed over the nodes, the node and scope labels dropped."""
    total: dict[tuple[str, tuple], float] = defaultdict(float)
    for client in clients:
        for name, labels, value in samples(client):
            key = tuple(sorted((k, v) for k, v in labels.items() if k not in ("node", "scope")))
            total[(name, key)] += value
    return total


def test_summing_every_node_s_metrics_gives_the_cluster_s_totals(
    make_client: AppFactory,
) -> None:
    with FalDouble() as fal:
        nodes = [
            make_client(node_id=name, fal_key=KEY, fal_url=fal.url, **FAST)
            for name in ("a", "b")
        ]
        ids = [
            (node, generate(node, f"job {i}", options={"provider": "fal"})["request_id"])
            for i, node in enumerate([nodes[0], nodes[0], nodes[1]])
        ]
        for node, request_id in ids:
            assert wait_done(node, request_id)["status"] == "completed"
        total = summed(*nodes)
        assert total[("darkroom_jobs_total", (("code", ""), ("status", "completed")))] == 3
        assert total[("darkroom_images_generated_total", ())] == 3
        fal_done = (("code", ""), ("provider", "fal"), ("status", "completed"))
        assert total[("darkroom_provider_jobs_total", fal_done)] == 3
        assert total[("darkroom_queue_depth", ())] == 0
        assert total[("darkroom_node_info", ())] == 2  # each node's own series: one each
        # the cluster's series come from one node, the live one with the smallest id
        scoped = {
            labels["node"]
            for node in nodes
            for _, labels, _ in samples(node)
            if labels.get("scope") == "cluster"
        }
        assert scoped == {"a"}
