"""The local federation's process control and PostgreSQL provisioning, on real
node processes: what the benchmark relies on."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import asyncpg
import pytest

from tools.localfed import PG_SERVER, Databases, LocalFederation, NodeFailed

pytestmark = pytest.mark.e2e

MUNICIPALITY = "312011"


async def test_pause_resume_and_stop_a_paused_node(tmp_path: Path) -> None:
    fed = LocalFederation(
        tmp_path,
        [MUNICIPALITY],
        node_settings={f"municipality-{MUNICIPALITY}": {"pool_refill_size": 321}},
    )
    await fed.prepare()
    name = f"municipality-{MUNICIPALITY}"
    assert "pool_refill_size = 321" in fed.nodes[name].config_path.read_text()
    try:
        await fed.start_all()
        node = fed.nodes["national"]
        assert node.running and node.cpu_seconds() > 0
        fed.pause("national")
        with pytest.raises(NodeFailed, match="not ready after 1 s"):
            await fed.wait_ready("national", within=1)  # stopped: it answers nothing
        fed.resume("national")
        await fed.wait_ready("national", within=10)
        await fed.wait_delivered(within=10)

        # A node of another tier answering on a node's port is not that node ready.
        fed.nodes["impostor"] = dataclasses.replace(
            node, tier="municipal", code=MUNICIPALITY, process=None
        )
        with pytest.raises(NodeFailed, match="not ready after 1 s"):
            await fed.wait_ready("impostor", within=1)
        del fed.nodes["impostor"]

        fed.pause("national")
        fed.stop("national", grace=15)  # resumed first, so it stops cleanly on SIGTERM
        assert node.process is not None and node.process.returncode == 0
        assert not node.running and node.cpu_seconds() == 0.0
        await fed.start_nodes(["national"])  # same port, same database
        await fed.wait_delivered(within=10)
    finally:
        fed.stop_all()


@pytest.mark.postgres
@pytest.mark.skipif(
    os.environ.get("JUKINET_TEST_PG", "").lower() == "skip", reason="PostgreSQL skipped"
)
async def test_postgres_databases_are_made_per_node_and_dropped(
    tmp_path: Path, pg_available: None
) -> None:
    dbs = Databases("postgres", tmp_path / "data", prefix="jktest")
    fed = LocalFederation(tmp_path, [MUNICIPALITY], databases=dbs)
    await fed.prepare()
    made = list(dbs.created)
    assert len(made) == 3  # national, prefecture, municipality; the gateway has none
    assert all(fed.nodes[n].database_url.startswith("postgresql+asyncpg://") for n in fed.nodes)
    try:
        await fed.start_all()
        await fed.wait_delivered(within=10)
    finally:
        await fed.close()
    conn = await asyncpg.connect(PG_SERVER, timeout=10)
    try:
        left = await conn.fetch("SELECT datname FROM pg_database WHERE datname = ANY($1)", made)
    finally:
        await conn.close()
    assert left == []
