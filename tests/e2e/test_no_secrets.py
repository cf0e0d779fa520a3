"""No secret reaches a log line or an error body (issue 13, security review): API keys
sent every way a client might send them, a key created through the admin API, the
bootstrap admin key and the Postgres password every process was started with."""

from __future__ import annotations

import secrets
import time

import httpx
from psycopg.conninfo import conninfo_to_dict


def test_no_secret_reaches_a_log_line_or_an_error_body(api, fleet):
    admin_key = fleet.config.admin_key
    pg_password = conninfo_to_dict(fleet.config.postgres_dsn).get("password")
    assert pg_password, "the session fleet runs with a password in its DSN (tests/e2e/conftest.py)"
    created = api.post("/admin/v1/api-keys", json={"name": "secrets-check", "scopes": ["recommend:read"]})
    assert created.status_code == 201, created.text
    real = created.json()["secret"]
    wrong = f"rf_{secrets.token_hex(16)}"
    bodies: list[str] = []

    def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        reply = httpx.request(method, f"{fleet.gateway_url}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]
        bodies.append(reply.text)
        bodies.extend(f"{name}: {value}" for name, value in reply.headers.items())
        return reply

    recommend = "/v1/recommendations"
    assert call("GET", recommend, params={"user_id": "1"}, headers={"Authorization": f"Bearer {real}"}).is_success
    assert call("GET", recommend, params={"user_id": "1"}, headers={"X-API-Key": real}).is_success
    # Refusals: a wrong key, a key of too narrow a scope, keys in places they do not belong.
    assert (
        call("GET", recommend, params={"user_id": "1"}, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    )
    assert (
        call("GET", recommend, params={"user_id": "1"}, headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    )
    assert call("POST", "/v1/events", json={"events": []}, headers={"X-API-Key": real}).status_code == 403
    assert (
        call("GET", recommend, params={"user_id": "1", "api_key": wrong}, headers={"X-API-Key": real}).status_code
        == 400
    )
    assert call("GET", recommend, params={"user_id": wrong}).status_code == 401
    assert call("PUT", f"/v1/items/{wrong}", json={"title": real}, headers={"X-API-Key": wrong}).status_code == 401
    time.sleep(1)  # let every process flush its last lines

    leaked = {
        name: secret
        for name, secret in {"created key": real, "wrong key": wrong, "admin key": admin_key}.items()
        if any(secret in body for body in bodies)
    }
    assert not leaked, f"secrets in response bodies or headers: {sorted(leaked)}"
    logs = sorted(fleet.log_dir.glob("*.log"))
    # The refusals above were logged (a refusal's access line is at INFO), so the search
    # below reads the lines these requests wrote.
    gateway_log = (fleet.log_dir / "gateway.log").read_text(errors="replace")
    assert '"status": 401' in gateway_log and '"status": 403' in gateway_log
    assert {"gateway.log", "ranking.log", "feature-store.log", "event-sink.log"} <= {path.name for path in logs}
    found = [
        f"{path.name}: {name}"
        for path in logs
        for name, secret in {
            "postgres password": pg_password,
            "created key": real,
            "wrong key": wrong,
            "admin key": admin_key,
            "erasure hash key": fleet.erasure_hash_key(),
        }.items()
        if secret in path.read_text(errors="replace")
    ]
    assert not found, f"secrets in log files: {found}"
