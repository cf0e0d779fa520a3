"""`recfleetctl`: operate a recfleet installation through the gateway's admin API.

Works the same against a local fleet and a cluster: point `--url` (or RECFLEET_URL) at
the gateway and pass an admin key with `--key` (or RECFLEET_API_KEY).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

console = Console()
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Model and index versions.", no_args_is_help=True)
jobs_app = typer.Typer(help="Batch jobs.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
traffic_app = typer.Typer(help="Canary weights, shadow traffic, staged rollouts, rollback.", no_args_is_help=True)
experiments_app = typer.Typer(help="Online experiments: create, list, stop, readout.", no_args_is_help=True)
app.add_typer(traffic_app, name="traffic")
app.add_typer(experiments_app, name="experiments")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")

_state = {"url": "http://127.0.0.1:8080", "key": "dev-admin-key"}


@app.callback()
def main_options(
    url: str = typer.Option(os.environ.get("RECFLEET_URL", "http://127.0.0.1:8080"), help="gateway base URL"),
    key: str = typer.Option(os.environ.get("RECFLEET_API_KEY", "dev-admin-key"), help="API key with the admin scope"),
) -> None:
    _state.update(url=url.rstrip("/"), key=key)


def request(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {_state['key']}"}
    try:
        reply = httpx.request(method, f"{_state['url']}{path}", headers=headers, timeout=30, **kwargs)
    except httpx.HTTPError as error:
        console.print(f"[red]cannot reach {_state['url']}: {error}[/]")
        raise typer.Exit(2) from error
    if reply.status_code >= 400:
        try:
            problem = reply.json()
            detail = problem.get("detail") or problem.get("title")
        except ValueError:
            detail = reply.text
        console.print(f"[red]{method} {path} -> {reply.status_code}: {detail}[/]")
        raise typer.Exit(1)
    return reply.json() if reply.content else {}


def emit(data: object, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        console.print_json(json.dumps(data, default=str))


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Health of every downstream service and the serving model versions."""
    reply = httpx.get(f"{_state['url']}/healthz/ready", timeout=10)
    health = reply.json() if reply.content else {}
    models = request("GET", "/admin/v1/models")
    data = {"ready": reply.status_code == 200, "health": health, "models": models}
    if as_json:
        emit(data, True)
        return
    console.print(f"gateway {_state['url']}: {'[green]ready[/]' if data['ready'] else '[red]not ready[/]'}")
    emit(health, False)
    emit(models, False)
    if not data["ready"]:
        raise typer.Exit(1)


@app.command("index")
def index_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Index version, item count and last reload outcome of every candidate-gen shard."""
    data = request("GET", "/admin/v1/index")
    if as_json:
        emit(data, True)
        return
    table = Table("shard", "track", "target", "version", "index", "items", "last reload", "refused")
    for shard in data.get("shards", []):
        table.add_row(
            str(shard.get("shard", "?")),
            shard.get("track", ""),
            shard.get("target", ""),
            shard.get("model_version", ""),
            shard.get("index_type", ""),
            str(shard.get("item_count", "")),
            shard.get("last_reload") or shard.get("error", ""),
            shard.get("refused_version", ""),
        )
    console.print(table)


@app.command("cache-flush")
def cache_flush(user_id: str) -> None:
    """Drop one user's cached recommendations (they are recomputed on the next call)."""
    emit(request("DELETE", f"/admin/v1/cache/{user_id}"), False)


@models_app.command("list")
def models_list(
    kind: str = typer.Option("", help="als or ranker"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Registered versions with their status."""
    data = request("GET", "/admin/v1/models")
    versions = data.get("versions", data if isinstance(data, list) else [])
    if kind:
        versions = [v for v in versions if v.get("kind") == kind]
    if as_json:
        emit(versions, True)
        return
    table = Table("version", "kind", "status", "created", "promoted")
    for v in versions:
        table.add_row(
            v.get("version"),
            v.get("kind"),
            v.get("status"),
            str(v.get("created_at", "")),
            str(v.get("promoted_at") or ""),
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    kind: str,
    version: str,
    force: bool = typer.Option(False, "--force", help="promote even when the promotion gates refuse"),
) -> None:
    """Make a version serving: every shard and the user vectors switch together. Refused
    (409, with the reasons) for an ALS version without an index for every shard, or one
    whose validation metric falls too far below the serving version's, unless --force."""
    emit(request("POST", f"/admin/v1/models/{kind}/promote", json={"version": version, "force": force}), False)


@models_app.command("rollback")
def models_rollback(kind: str) -> None:
    """Serve the previously serving version again."""
    emit(request("POST", f"/admin/v1/models/{kind}/rollback"), False)


@jobs_app.command("run")
def jobs_run(
    name: str,
    wait: bool = typer.Option(True, help="wait for the job and print its output"),
    timeout: float = typer.Option(900, help="seconds to wait"),
) -> None:
    """Run a batch job now (train-als, build-index, train-ranker, materialize, popularity, evaluate)."""
    job = request("POST", f"/admin/v1/jobs/{name}")
    job_id = job.get("job_id") or job.get("id")
    console.print(f"job {job_id} queued")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = request("GET", f"/admin/v1/jobs/{job_id}")
        if state.get("status") in ("succeeded", "failed"):
            console.print(state.get("output", ""))
            console.print(f"job {job_id}: {state['status']}")
            raise typer.Exit(0 if state["status"] == "succeeded" else 1)
        time.sleep(1)
    console.print(f"[red]job {job_id} still running after {timeout:.0f}s[/]")
    raise typer.Exit(1)


@jobs_app.command("status")
def jobs_status(job_id: str) -> None:
    """Status and output of a job."""
    emit(request("GET", f"/admin/v1/jobs/{job_id}"), False)


@keys_app.command("create")
def keys_create(
    name: str,
    scopes: list[str] = typer.Option(..., "--scope", help="repeat for several"),
    ttl: int = typer.Option(0, "--ttl", help="seconds until the key expires (default: never)"),
    expires_at: str = typer.Option("", "--expires-at", help="RFC 3339 time the key expires (instead of --ttl)"),
) -> None:
    """Create a key; its secret is printed once."""
    emit(
        request("POST", "/admin/v1/api-keys", json={"name": name, "scopes": scopes, **_expiry(ttl, expires_at)}), False
    )


def _expiry(ttl: int, expires_at: str) -> dict[str, Any]:
    if ttl and expires_at:
        raise typer.BadParameter("give --ttl or --expires-at, not both")
    return {"ttl_seconds": ttl} if ttl else {"expires_at": expires_at} if expires_at else {}


@keys_app.command("list")
def keys_list() -> None:
    """Keys with scopes, status, expiry and successor (never their secrets)."""
    emit(request("GET", "/admin/v1/api-keys"), False)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once (to replace a key without an outage, use `keys rotate`)."""
    emit(request("DELETE", f"/admin/v1/api-keys/{key_id}"), False)


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    overlap: int = typer.Option(3600, "--overlap", help="seconds the old key keeps working (0..604800)"),
    ttl: int = typer.Option(0, "--ttl", help="seconds until the new key expires (default: never)"),
    expires_at: str = typer.Option("", "--expires-at", help="RFC 3339 time the new key expires"),
) -> None:
    """A new key with the same name and scopes (its secret is printed once); the old one
    keeps working for the overlap, then expires."""
    body = {"overlap_seconds": overlap, **_expiry(ttl, expires_at)}
    emit(request("POST", f"/admin/v1/api-keys/{key_id}/rotate", json=body), False)


@keys_app.command("bootstrap")
def keys_bootstrap() -> None:
    """Whether the bootstrap admin key (RECFLEET_BOOTSTRAP_ADMIN_KEY) is disabled."""
    emit(request("GET", "/admin/v1/api-keys/bootstrap"), False)


@keys_app.command("disable-bootstrap")
def keys_disable_bootstrap() -> None:
    """Refuse the bootstrap admin key from now on (needs another usable admin key)."""
    emit(request("POST", "/admin/v1/api-keys/bootstrap/disable"), False)


@keys_app.command("enable-bootstrap")
def keys_enable_bootstrap() -> None:
    """Accept the bootstrap admin key again (call it with another admin key)."""
    emit(request("POST", "/admin/v1/api-keys/bootstrap/enable"), False)


@app.command("audit")
def audit(
    action: str = typer.Option("", help="only this action, e.g. traffic.set or api_key.rotate"),
    key_id: str = typer.Option("", "--key-id", help="only actions of this key"),
    since: str = typer.Option("", help="only actions at or after this RFC 3339 time"),
    limit: int = typer.Option(100, help="entries per page (1..500)"),
    before: int = typer.Option(0, help="only entries older than this audit id (the next page)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Admin actions, newest first: who, under which request, what, before and after."""
    filters = {"action": action, "key_id": key_id, "since": since, "before": before or "", "limit": limit}
    data = request("GET", "/admin/v1/audit", params={k: v for k, v in filters.items() if v != ""})
    if as_json:
        emit(data, True)
        return
    table = Table("id", "when", "key", "action", "target", "before", "after", "request id")
    for entry in data.get("entries", []):
        table.add_row(
            str(entry["audit_id"]),
            str(entry["created_at"]),
            f"{entry['key_id']} ({entry['key_name']})" if entry.get("key_name") else entry["key_id"],
            entry["action"],
            entry["target"],
            _compact(entry.get("before")),
            _compact(entry.get("after")),
            entry.get("request_id") or "",
        )
    console.print(table)
    if data.get("next_before"):
        console.print(f"older entries: --before {data['next_before']}")


def _compact(state: dict[str, Any] | None) -> str:
    return "" if state is None else json.dumps(state, separators=(",", ":"), default=str)


def _rollout_summary(rollout: dict[str, Any] | None) -> str:
    """`running 2/4 (10%) held 120/300 s`, `rolled-back 1/4 (1%): <reason>`."""
    if not rollout:
        return ""
    where = f"{rollout['stage']}/{len(rollout['stages'])} ({rollout['weight']}%)"
    if rollout["status"] == "running":
        return f"running {where} held {rollout['held_seconds']:.0f}/{rollout['hold_seconds']:g} s"
    if rollout["status"] in ("rolled-back", "aborted"):
        return f"{rollout['status']} {where}: {rollout.get('reason', '')}"
    return f"{rollout['status']} {where}"


@traffic_app.command("status")
def traffic_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Weights, shadow share, freeze state and recent rollbacks with their reasons."""
    data = request("GET", "/admin/v1/traffic")
    if as_json:
        emit(data, True)
        return
    table = Table("service", "canary", "weight", "shadow %", "source", "frozen", "reason", "rollout")
    for row in data.get("services", []):
        table.add_row(
            row["service"],
            "yes" if row.get("has_canary") else "no",
            str(row["weight"]),
            str(row["shadow_percent"]),
            row.get("source", ""),
            "yes" if row.get("frozen") else "no",
            row.get("reason", ""),
            _rollout_summary(row.get("rollout")),
        )
    console.print(table)
    rollouts = [row["rollout"] for row in data.get("services", []) if row.get("rollout")]
    if rollouts:
        gates = Table("service", "rollout", "gate", "canary", "stable", "verdict", "detail", title="last gate readings")
        for rollout in rollouts:
            for reading in rollout.get("readings", []):
                gates.add_row(
                    rollout["service"],
                    rollout["status"],
                    reading["gate"],
                    f"{reading['canary']:.4g}",
                    f"{reading['stable']:.4g}",
                    reading["verdict"],
                    reading["detail"],
                )
            if not rollout.get("readings"):
                gates.add_row(rollout["service"], rollout["status"], "", "", "", "", rollout.get("reason", ""))
        console.print(gates)
    events = data.get("events", [])
    if events:
        log = Table("when", "service", "action", "weight", "reason", "actor")
        for event in events:
            log.add_row(
                str(event.get("created_at", "")),
                event["service"],
                event["action"],
                str(event.get("weight")),
                event.get("reason", ""),
                event.get("actor", ""),
            )
        console.print(log)


@traffic_app.command("set")
def traffic_set(service: str, weight: int, shadow: int = typer.Option(0, help="shadow percent 0-100")) -> None:
    """Set a service's canary weight (0-100) and shadow percent."""
    emit(request("PUT", f"/admin/v1/traffic/{service}", json={"weight": weight, "shadow_percent": shadow}), False)


@traffic_app.command("rollback")
def traffic_rollback(
    service: str, reason: str = typer.Option("manual rollback", help="recorded with the event")
) -> None:
    """Weight to 0 at once; raising it again needs `traffic ack`."""
    emit(request("POST", f"/admin/v1/rollback/{service}", json={"reason": reason}), False)


@traffic_app.command("ack")
def traffic_ack(service: str) -> None:
    """Acknowledge a rollback so the weight may be raised again."""
    emit(request("POST", f"/admin/v1/traffic/{service}/ack"), False)


@traffic_app.command("rollout")
def traffic_rollout(
    service: str,
    stages: str = typer.Option("", help="weights to move through, e.g. 1,10,50,100 (default: the gateway's setting)"),
    hold: float | None = typer.Option(None, help="least seconds each stage is held (default: the gateway's setting)"),
) -> None:
    """Start a staged rollout: the gateway holds each stage until its traffic passes the
    error-rate, p99 and recommendation KPI gates, then moves to the next; a breach rolls
    the canary back. Follow it with `traffic status`."""
    body: dict[str, Any] = {}
    if stages:
        try:
            body["stages"] = [int(part) for part in stages.split(",") if part.strip()]
        except ValueError:
            console.print(f"[red]--stages: comma-separated integer weights, e.g. 1,10,50,100, not {stages!r}[/]")
            raise typer.Exit(2) from None
    if hold is not None:
        body["hold_seconds"] = hold
    state = request("POST", f"/admin/v1/traffic/{service}/rollout", json=body)
    console.print(f"{service}: {_rollout_summary(state.get('rollout'))}")


@traffic_app.command("abort")
def traffic_abort(
    service: str, reason: str = typer.Option("aborted by an operator", help="recorded with the event")
) -> None:
    """Abort a staged rollout: the canary's weight goes to 0 (not frozen)."""
    state = request("POST", f"/admin/v1/traffic/{service}/rollout/abort", json={"reason": reason})
    console.print(f"{service}: {_rollout_summary(state.get('rollout'))}")


@traffic_app.command("step")
def traffic_step(
    service: str,
    steps: str = typer.Option("1,10,50,100", help="weights to move through"),
    pause: float = typer.Option(60, help="seconds to hold each step while the gates are watched"),
) -> None:
    """Stepped promotion: hold each weight for `pause` seconds; stop if the canary is rolled back."""
    for weight in [int(s) for s in steps.split(",")]:
        request("PUT", f"/admin/v1/traffic/{service}", json={"weight": weight, "shadow_percent": 0})
        console.print(f"{service}: weight {weight}, holding {pause:.0f}s")
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            state = next(s for s in request("GET", "/admin/v1/traffic")["services"] if s["service"] == service)
            if state.get("frozen"):
                console.print(f"[red]{service} was rolled back: {state.get('reason')}[/]")
                raise typer.Exit(1)
            time.sleep(min(2.0, pause))
    console.print(f"[green]{service} promoted to 100%[/]")


def parse_variant(text: str) -> dict[str, Any]:
    """`NAME=SHARE:RANKER` (RANKER: `rules`, `serving` or a ranker version; `serving`
    when left out) -> the admin API's variant object."""
    name, sep, rest = text.partition("=")
    share, _, ranker = rest.partition(":")
    try:
        value = float(share)
    except ValueError:
        value = None
    if not sep or not name or value is None:
        raise typer.BadParameter(f"{text!r}: expected NAME=SHARE[:RANKER], e.g. control=0.5:rules")
    return {"name": name, "share": value, "ranker_version": ranker or "serving"}


@experiments_app.command("create")
def experiments_create(
    name: str,
    variants: list[str] = typer.Option(
        ...,
        "--variant",
        help="NAME=SHARE[:RANKER], repeat; the first is the control; RANKER: rules, serving or a version",
    ),
    salt: str = typer.Option("", help="bucketing salt (default: the name)"),
    surface: str = typer.Option("", help="only requests for this surface take part (default: all)"),
) -> None:
    """Start an experiment, e.g. `--variant control=0.5:rules --variant treatment=0.5:serving`."""
    body = {"name": name, "variants": [parse_variant(v) for v in variants]}
    if salt:
        body["salt"] = salt
    if surface:
        body["surface"] = surface
    emit(request("POST", "/admin/v1/experiments", json=body), False)


@experiments_app.command("list")
def experiments_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Experiments, newest first, with their variants and status."""
    data = request("GET", "/admin/v1/experiments")
    if as_json:
        emit(data, True)
        return
    table = Table("name", "status", "surface", "variants", "created", "stopped")
    for row in data.get("experiments", []):
        variants = ", ".join(f"{v['name']}={v['share']:g}:{v['ranker_version']}" for v in row["variants"])
        table.add_row(
            row["name"],
            row["status"],
            row.get("surface") or "(all)",
            variants,
            str(row.get("created_at", "")),
            str(row.get("stopped_at") or ""),
        )
    console.print(table)


@experiments_app.command("stop")
def experiments_stop(name: str) -> None:
    """Stop an experiment: responses leave it within seconds; exposures and readout stay."""
    emit(request("POST", f"/admin/v1/experiments/{name}/stop"), False)


def _fraction(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@experiments_app.command("readout")
def experiments_readout(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Per variant exposures, clicks, CTR, lift with its 95% CI and p-value; SRM check."""
    data = request("GET", f"/admin/v1/experiments/{name}/readout")
    if as_json:
        emit(data, True)
        return
    table = Table("variant", "exposures", "clicks", "ctr", "lift", "relative", "95% CI", "p-value")
    for row in data["variants"]:
        interval = row.get("ci95")
        table.add_row(
            row["variant"] + (" (control)" if row["variant"] == data["control"] else ""),
            str(row["exposures"]),
            str(row["clicks"]),
            _fraction(row["ctr"]),
            _fraction(row.get("lift")),
            "" if row.get("relative_lift") is None else f"{row['relative_lift']:+.1%}",
            "" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]",
            _fraction(row.get("p_value")),
        )
    console.print(f"experiment {data['experiment']} ({data['status']})")
    console.print(table)
    srm = data["srm"]
    if srm["mismatch"]:
        console.print(
            f"[red]sample ratio mismatch (p={srm['p_value']:.2g}): the split is broken; do not trust the lift[/]"
        )
    else:
        console.print(f"sample ratio ok (p={srm['p_value']:.2g})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
