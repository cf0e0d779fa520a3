"""The Python client snippet of docs/api.md runs against a gateway: auth, pages through
the cursor, `fields`, and retries that honour `Retry-After`."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
from gateway_catalog_store import catalog_fleet
from gateway_scripted_fleet import ITEMS
from gateway_test_support import ADMIN_KEY

API_DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"
MARKER = "<!-- snippet: python-client -->"


def python_snippet() -> str:
    """The ```python block right after MARKER in docs/api.md."""
    text = API_DOC.read_text()
    assert MARKER in text, f"{MARKER} is missing from {API_DOC}"
    found = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.DOTALL)
    assert found, f"no python block right after {MARKER}"
    return found.group(1)


@pytest.fixture
async def fleet(redis_url):
    scripted = catalog_fleet(redis_url)
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
def gateway_settings(gateway_settings):
    # One read in flight at a time, so that a held request makes the next one 503 with
    # Retry-After; budgets long enough that the held one is not cut short meanwhile.
    return gateway_settings.model_copy(
        update={"max_in_flight": 1, "feature_store_timeout": 60.0, "request_timeout": 120.0}
    )


async def start_snippet(url: str, tmp_path: Path) -> asyncio.subprocess.Process:
    script = tmp_path / "client.py"
    script.write_text(python_snippet())
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RF": url, "KEY": ADMIN_KEY, "USER_ID": "warm-1"},
    )


async def write_titles(client) -> None:
    items = [{"item_id": item_id, "title": f"Title of {item_id}"} for item_id in ITEMS]
    reply = await client.post("/v1/items:batch", json={"items": items})
    assert reply.status_code == 200, reply.text


def printed_pages(output: bytes) -> list[tuple[str, str, str, str]]:
    return [tuple(line.split("\t")) for line in output.decode().splitlines()]


async def test_the_python_snippet_pages_through_a_list_with_titles(client, served, tmp_path):
    await write_titles(client)
    process = await start_snippet(served, tmp_path)
    output, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()
    lines = printed_pages(output)
    assert [page for page, *_ in lines] == ["1"] * 10 + ["2"] * 10
    assert [int(rank) for _, rank, _, _ in lines] == list(range(1, 21))
    assert len({item_id for _, _, item_id, _ in lines}) == 20
    assert all(title == f"Title of {item_id}" for _, _, item_id, title in lines)


async def test_the_python_snippet_waits_as_retry_after_says(client, served, fleet, tmp_path):
    await write_titles(client)
    store = fleet.features.servicer
    store.held_users.add("held")
    # The one read slot is taken until the test lets this request go on.
    holder = asyncio.create_task(client.get("/v1/recommendations", params={"user_id": "held"}))
    await store.holding.wait()
    process = await start_snippet(served, tmp_path)
    assert process.stderr is not None
    first = (await process.stderr.readline()).decode()
    assert first.startswith("503: retrying in "), first
    # The gateway said `Retry-After: 1`; without it the first wait would be under 1 s.
    assert float(first.split()[3]) >= 1.0
    store.release.set()
    assert (await holder).status_code == 200
    output, _ = await process.communicate()
    assert process.returncode == 0
    lines = printed_pages(output)
    assert len(lines) == 20
    assert all(title == f"Title of {item_id}" for _, _, item_id, title in lines)
