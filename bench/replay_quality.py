"""Online equals offline: a data set replayed through the REST API, scored as served.

It starts a fleet of its own with an empty catalog and no events (free ports, a fresh
Postgres database, its own Redis database and broker; the local runner's batch pipeline
is off), splits the data set with the protocol's own split function (the seed
`recfleet-jobs evaluate` uses), and then, through the public API only:

1. upserts the catalog (`POST /v1/items:batch`: titles, genres as categories, release
   year as `published_at`, tags) and sends the TRAIN part as `rating` events with their
   values and original timestamps (`POST /v1/events`, 500 a batch, ids derived from the
   rating as `load-movielens` derives them, so a retried batch is stored once);
2. waits until event-ingest's Postgres sink stored every accepted event;
3. retrains through the jobs API: `train-als` (no hyper-parameter search unless
   `--tune-seconds` says otherwise), `build-index`, the ALS promotion, `popularity`,
   `materialize`, `train-ranker` and, when the ranker passes its gate, its promotion.
   When it does not, ranking serves its rule rung; the bench then does what docs/ranking.md
   tells an operator to do when the gate's verdict says the candidate order beats the
   rule formula (rule weights of popularity and freshness to 0), so the fleet serves what
   the gate chose;
4. asks `GET /v1/recommendations?user_id=...&limit=10` for every test user (under
   `recbole` with the user's validation items in `exclude`: the protocol never
   recommends them, and they are neither trained on nor loaded) and scores the lists
   with the project's own metric functions against the test part;
5. asks again with ranking's category cap lifted (`RECFLEET_RANKING_MAX_PER_CATEGORY`
   equal to the diversity window), so the cost of the diversity rule shows on its own
   (`--no-diversity-check` skips it);
6. runs `recfleet-jobs evaluate` on the same data and protocol with the model that matches
   what served (`als`, `als+rules`, or `als+ranker --ranker-preset production` when a
   ranker was promoted) and the serving diversity rule (`--max-per-category` and
   `--diversity-window` as the fleet's ranking serves them: ranking's default settings,
   set explicitly on the fleet), once retrained offline and, for ALS, once on the very
   version the fleet served (`--version`); with the diversity check, the same again
   without the rule, to compare with the cap-lifted pass.

It prints each online pass beside the offline figures of the same rule with the
difference, the `served_by` / `degraded` /
`cold_start` counts of the online answers and the items served from metadata vectors
(catalog items without training ratings, which the offline model cannot recommend), and
writes `bench/results/replay_quality_<format>.json` and a PNG chart.

    .venv/bin/python bench/replay_quality.py --dataset data/ml-latest-small \\
        --format ml-latest-small --protocol recbole
    .venv/bin/python bench/replay_quality.py --dataset ../shared/datasets/ml-100k \\
        --format ml-100k --protocol recommenders-ml100k
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from psycopg.conninfo import make_conninfo
from recfleet_models.data import FORMATS, Movie, Ratings, read_movielens, unique_tags
from recfleet_models.evaluation import RankingMetrics, ranking_metrics, relevant_items
from recfleet_models.protocols import PROTOCOLS, Split, make_split
from recfleet_ranking.settings import RankingSettings
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ADMIN_KEY = "replay-admin-key"
BATCH = 500  # the API's limit per events / items batch
MAX_LABEL = 128  # catalog labels (categories, tags): 1-128 characters
MAX_TITLE = 1000
K = 10
# The diversity rule the fleet serves and `evaluate --max-per-category` applies: ranking's
# defaults (the chart sets the same). A category cap equal to the window caps nothing.
MAX_PER_CATEGORY = int(RankingSettings.model_fields["max_per_category"].default)
DIVERSITY_WINDOW = int(RankingSettings.model_fields["diversity_window"].default)
SERVING_RULE = ["--max-per-category", str(MAX_PER_CATEGORY), "--diversity-window", str(DIVERSITY_WINDOW)]


# -- the split as API payloads (pure) ------------------------------------------------------


def rfc3339(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(int(epoch_seconds), UTC).isoformat().replace("+00:00", "Z")


def _label(text: str) -> str | None:
    """A catalog label as the API takes it (trimmed, 1-128 characters, no control
    characters), or None when the text cannot be one."""
    text = text.strip()
    if not text or len(text) > MAX_LABEL or any(ord(c) < 32 or ord(c) == 127 for c in text):
        return None
    return text


def catalog_payloads(movies: Sequence[Movie], tags: Mapping[int, list[str]]) -> list[dict[str, Any]]:
    """`POST /v1/items:batch` items: title, genres as categories (first = primary),
    January 1 of the release year as `published_at` (as `load-movielens` stores it), and
    up to 10 distinct tags."""
    items = []
    for movie in movies:
        item: dict[str, Any] = {
            "item_id": str(movie.movie_id),
            "title": movie.title[:MAX_TITLE],
            "categories": [g for g in (_label(genre) for genre in movie.genres) if g],
            "tags": [t for t in (_label(tag) for tag in unique_tags(tags.get(movie.movie_id, []))) if t],
        }
        if movie.year:
            item["published_at"] = rfc3339(int(datetime(movie.year, 1, 1, tzinfo=UTC).timestamp()))
        items.append(item)
    return items


def rating_event_id(user_id: int, movie_id: int, ts: int) -> str:
    """The id `recfleet-jobs load-movielens` gives the same rating (recfleet_jobs.bootstrap)."""
    from recfleet_jobs.bootstrap import rating_event_id as bootstrap_id

    return str(bootstrap_id(user_id, movie_id, ts))


def event_payloads(ratings: Ratings) -> list[dict[str, Any]]:
    """`POST /v1/events` events: one `rating` per row with its stars and original time."""
    return [
        {
            "event_id": rating_event_id(user, item, ts),
            "user_id": str(user),
            "item_id": str(item),
            "type": "rating",
            "value": float(value),
            "timestamp": rfc3339(ts),
        }
        for user, item, value, ts in zip(
            ratings.user_ids.tolist(),
            ratings.movie_ids.tolist(),
            ratings.ratings.tolist(),
            ratings.timestamps.tolist(),
            strict=True,
        )
    ]


def batches(rows: Sequence[Any], size: int = BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(rows), size):
        yield list(rows[start : start + size])


def exclusions(split: Split) -> dict[int, list[str]]:
    """Per user, the items the protocol excludes at test time besides the train part
    (RecBole's validation part): sent as `exclude`, since they are not loaded as events."""
    if split.validation is None:
        return {}
    out: dict[int, list[str]] = {}
    for user, item in zip(split.validation.user_ids.tolist(), split.validation.movie_ids.tolist(), strict=True):
        out.setdefault(user, []).append(str(item))
    return out


# -- scoring the online answers (pure) ---------------------------------------------------


@dataclass
class Pass:
    """The answers of one query pass over the test users."""

    label: str
    category_cap: bool = True
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def lists(self) -> dict[int, list[int]]:
        return {user: [int(i["item_id"]) for i in answer["items"]] for user, answer in self.answers.items()}

    def summary(self, split: Split) -> dict[str, Any]:
        truth = relevant_items(split.test)
        served = Counter(str(a.get("served_by")) for a in self.answers.values())
        degraded = Counter(reason for a in self.answers.values() for reason in a.get("degraded", []))
        metadata_items = metadata_hits = 0
        for user, answer in self.answers.items():
            for item in answer["items"][:K]:
                if item.get("source") == "metadata":
                    metadata_items += 1
                    metadata_hits += int(item["item_id"]) in truth.get(user, set())
        return {
            "label": self.label,
            "category_cap": self.category_cap,
            **online_metrics(self.lists(), split).as_dict(),
            "answers": len(self.answers),
            "errors": dict(self.errors),
            "served_by": dict(served),
            "degraded": dict(degraded),
            "cold_start": sum(bool(a.get("cold_start")) for a in self.answers.values()),
            "short_lists": sum(len(a["items"]) < K for a in self.answers.values()),
            "metadata_items": metadata_items,
            "metadata_hits": metadata_hits,
            "model_versions": dict(Counter(str(a.get("model_version")) for a in self.answers.values())),
            "seconds": round(self.seconds, 1),
        }


def online_metrics(recommended: Mapping[int, Sequence[int]], split: Split) -> RankingMetrics:
    """What `recfleet_models.evaluation.evaluate` computes, for lists made elsewhere."""
    truth = relevant_items(split.test)
    catalog = len(set(split.train.movie_ids.tolist()))
    return ranking_metrics({u: recommended[u] for u in truth if u in recommended}, truth, split.k, catalog)


def offline_model(ranker: Mapping[str, Any], ease: Sequence[str] = ()) -> list[str]:
    """The `evaluate` model (and options) that matches what ranked the served lists; with
    `ease` (its `--ease-l2`, `--ease-als-weight` and `--ease-popularity-penalty` options)
    the fused candidates'. The rules rung over the fused candidates serves their order
    (the bench zeroes the other rule terms), which is `als+ease`'s."""
    if ease:
        if ranker.get("promoted"):
            return ["--model", "als+ease+ranker", "--ranker-preset", "production", *ease]
        return ["--model", "als+ease", *ease]
    if ranker.get("promoted"):
        return ["--model", "als+ranker", "--ranker-preset", "production"]
    if ranker.get("serves") == "rules":
        return ["--model", "als+rules"]
    return ["--model", "als"]


def differences(online: Mapping[str, Any], offline: Mapping[str, Any]) -> dict[str, float]:
    return {metric: round(float(online[metric]) - float(offline[metric]), 4) for metric in (f"ndcg@{K}", f"recall@{K}")}


def comparisons(online: Sequence[Mapping[str, Any]], offline: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Each online pass against the offline figures made under the same diversity rule:
    the lists as served against `evaluate` with the serving rule, the cap-lifted pass
    against `evaluate` without it."""
    return {
        f"{p['label']} - offline {name}": differences(p, o)
        for p in online
        for name, o in offline.items()
        if bool(p.get("category_cap", True)) == ("diversity" in o)
    }


# -- the fleet -----------------------------------------------------------------------------


class ReplayFleet:
    """A local fleet on free ports with a fresh database, its own Redis database and its
    own broker, started without the batch pipeline (no catalog, no events, no model)."""

    def __init__(self, admin_dsn: str, redis_url: str, shards: int, extra_env: dict[str, str]):
        from recfleet_ctl.localfleet import FleetConfig, LocalFleet
        from recfleet_runtime.ports import free_port

        self.admin_dsn = admin_dsn
        self.database = f"recfleet_replay_{uuid.uuid4().hex[:10]}"
        self.dsn = make_conninfo(admin_dsn, dbname=self.database)
        self.redis_url = redis_url
        self.root = Path(tempfile.mkdtemp(prefix="recfleet-replay-"))
        config = FleetConfig(
            state_dir=self.root / "fleet",
            postgres_dsn=self.dsn,
            redis_url=redis_url,
            shard_count=shards,
            gateway_port=free_port(),
            admin_key=ADMIN_KEY,
            pipeline=False,
            free_ports=True,
            extra_env=extra_env,
        )
        self.fleet = LocalFleet(config)

    def start(self) -> None:
        redis.Redis.from_url(self.redis_url).flushdb()
        self.fleet.start()

    @property
    def url(self) -> str:
        return self.fleet.gateway_url

    def env(self) -> dict[str, str]:
        """What a job of this fleet sees (its artifact store, settings)."""
        return self.fleet.base_env()

    def restart_ranking(self, **settings: str) -> None:
        """Ranking again with these RECFLEET_RANKING_* settings, as an operator changes
        `ranking.env` and rolls the deployment."""
        process = self.fleet.processes["ranking"]
        process.env.update({f"RECFLEET_RANKING_{name.upper()}": value for name, value in settings.items()})
        self.fleet.restart_process("ranking")
        self.clear_result_cache()

    def clear_result_cache(self) -> None:
        """The gateway's cached lists (`rf:cache:*`): after a settings change neither a
        probe nor a pass may be answered from lists ranked before it."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter("rf:cache:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()

    def stop(self) -> None:
        if self.fleet.started:
            self.fleet.stop()

    def remove(self) -> None:
        """The database, the Redis database's keys and the state directory."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        redis.Redis.from_url(self.redis_url).flushdb()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the REST API ----------------------------------------------------------------------------


class Api:
    """The calls the replay makes, with retries where the API says to retry."""

    def __init__(self, url: str, key: str):
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def close(self) -> None:
        self.client.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(20):
            reply = self.client.request(method, path, **kwargs)
            if reply.status_code not in (429, 503):
                return reply
            time.sleep(float(reply.headers.get("Retry-After", "1")) * (1 + attempt / 10))
        return reply

    def upsert_items(self, items: list[dict[str, Any]]) -> None:
        reply = self._send("POST", "/v1/items:batch", json={"items": items})
        if reply.status_code != 200:
            raise RuntimeError(f"POST /v1/items:batch answered {reply.status_code}: {reply.text[:500]}")

    def send_events(self, events: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
        reply = self._send("POST", "/v1/events", json={"events": events})
        if reply.status_code not in (202, 400):
            raise RuntimeError(f"POST /v1/events answered {reply.status_code}: {reply.text[:500]}")
        body = reply.json()
        if reply.status_code == 400:
            return 0, [{"error": body.get("detail", reply.text[:200])}]
        return int(body["accepted"]), list(body["rejected"])

    def run_job(self, name: str, timeout: float = 1800) -> dict[str, Any]:
        """Start a job through `POST /admin/v1/jobs/{name}` and wait for its outcome."""
        reply = self._send("POST", f"/admin/v1/jobs/{name}")
        if reply.status_code != 202:
            raise RuntimeError(f"POST /admin/v1/jobs/{name} answered {reply.status_code}: {reply.text[:500]}")
        job_id = reply.json()["job_id"]
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            job = self._send("GET", f"/admin/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed"):
                job["seconds"] = round(time.monotonic() - started, 1)
                if job["status"] == "failed":
                    raise RuntimeError(f"job {name} ({job_id}) failed:\n{job['output'][-3000:]}")
                return dict(job)
            time.sleep(1.0)
        raise TimeoutError(f"job {name} ({job_id}) still running after {timeout:.0f}s")

    def promote(self, kind: str, version: str) -> tuple[bool, dict[str, Any]]:
        reply = self._send("POST", f"/admin/v1/models/{kind}/promote", json={"version": version})
        if reply.status_code not in (200, 409):
            raise RuntimeError(f"promoting {kind} {version} answered {reply.status_code}: {reply.text[:500]}")
        return reply.status_code == 200, dict(reply.json())

    def recommend(self, user: int, exclude: Sequence[str]) -> httpx.Response:
        params: list[tuple[str, str | int]] = [("user_id", str(user)), ("limit", K)]
        if exclude:
            params.append(("exclude", ",".join(exclude)))
        return self._send("GET", "/v1/recommendations", params=params)


def load_catalog(api: Api, items: list[dict[str, Any]]) -> None:
    with tqdm(total=len(items), desc="catalog", unit="item") as bar:
        for batch in batches(items):
            api.upsert_items(batch)
            bar.update(len(batch))


def load_events(api: Api, events: list[dict[str, Any]], concurrency: int) -> tuple[int, Counter[str]]:
    """Send every event; (accepted, rejection reasons)."""
    accepted, rejected = 0, Counter[str]()
    with tqdm(total=len(events), desc="events", unit="event") as bar, ThreadPoolExecutor(concurrency) as pool:
        for batch, (count, refused) in zip(batches(events), pool.map(api.send_events, batches(events)), strict=True):
            accepted += count
            rejected.update(str(r.get("error", "?")).split(":")[0] for r in refused)
            bar.update(len(batch))
    return accepted, rejected


def wait_stored(dsn: str, expected: int, settle: float = 60.0) -> int:
    """Rows in `events` once the sink stored `expected`, or nothing new came for `settle` s."""
    last, since = -1, time.monotonic()
    with tqdm(total=expected, desc="stored", unit="event") as bar:
        while True:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SELECT count(*) FROM events").fetchone()
            stored = int(row[0]) if row else 0
            bar.update(stored - bar.n)
            if stored >= expected:
                return stored
            if stored != last:
                last, since = stored, time.monotonic()
            elif time.monotonic() - since > settle:
                return stored
            time.sleep(1.0)


def last_json(output: str) -> dict[str, Any]:
    """The last line of a job's output that is a JSON object (the job's summary)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}


def wait_served(api: Api, user: int, accept: Any, what: str, timeout: float = 180) -> dict[str, Any]:
    """Ask for the user's list until `accept(answer)` holds (a version loaded, a ranker
    serving); the answers before it are neither scored nor cached in a way that matters:
    the gateway keys its cache by the serving versions and never caches degraded lists."""
    started, answer = time.monotonic(), {}
    while time.monotonic() - started < timeout:
        reply = api.recommend(user, ())
        if reply.status_code == 200:
            answer = reply.json()
            if accept(answer):
                return dict(answer)
        time.sleep(1.0)
    raise TimeoutError(f"{what} not served within {timeout:.0f}s; last answer: {json.dumps(answer)[:500]}")


def query(
    api: Api,
    users: Sequence[int],
    exclude: Mapping[int, list[str]],
    label: str,
    concurrency: int,
    category_cap: bool = True,
) -> Pass:
    result = Pass(label, category_cap)
    started = time.perf_counter()

    def one(user: int) -> tuple[int, httpx.Response]:
        return user, api.recommend(user, exclude.get(user, ()))

    with tqdm(total=len(users), desc=label, unit="user") as bar, ThreadPoolExecutor(concurrency) as pool:
        for user, reply in pool.map(one, users):
            if reply.status_code == 200:
                result.answers[user] = reply.json()
            else:
                result.errors[str(reply.status_code)] += 1
            bar.update(1)
    result.seconds = time.perf_counter() - started
    return result


def evaluate_offline(
    args: argparse.Namespace, model: list[str], env: dict[str, str], version: str = "", rule: Sequence[str] = ()
) -> dict:
    command = [
        sys.executable,
        "-m",
        "recfleet_jobs",
        "evaluate",
        "--dataset",
        str(args.dataset),
        "--format",
        args.format,
        "--protocol",
        args.protocol,
        *model,
        *rule,
    ]
    command += ["--version", version] if version else ["--tune-seconds", str(args.tune_seconds)]
    print("$", " ".join(command[2:]), file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = dict(json.loads(done.stdout))
    out["command"] = " ".join(["recfleet-jobs", *command[3:]])
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    return out


# -- the run ----------------------------------------------------------------------------------


def retrain(api: Api, fleet: ReplayFleet, probe: int, train_ranker: bool, timings: dict[str, float]) -> dict:
    """The jobs chain through the admin API; what serves afterwards."""
    jobs: dict[str, Any] = {}
    job = api.run_job("train-als")
    lines = job["output"].splitlines()
    als_version = next(line.split("=", 1)[1] for line in reversed(lines) if line.startswith("version="))
    jobs["train-als"] = {"seconds": job["seconds"], "version": als_version, "summary": last_json(job["output"])}
    jobs["build-index"] = {"seconds": api.run_job("build-index")["seconds"]}
    promoted, body = api.promote("als", als_version)
    if not promoted:
        raise RuntimeError(f"the ALS version was refused: {body}")
    for name in ("popularity", "materialize"):
        jobs[name] = {"seconds": api.run_job(name)["seconds"]}
    wait_served(
        api,
        probe,
        lambda a: str(a.get("model_version", "")).startswith(als_version) and not a.get("cold_start"),
        f"ALS version {als_version}",
    )
    timings.update({name: float(value["seconds"]) for name, value in jobs.items()})
    ranker: dict[str, Any] = {"trained": False, "promoted": False, "serves": "candidate-order"}
    if train_ranker:
        job = api.run_job("train-ranker")
        timings["train-ranker"] = float(job["seconds"])
        summary = last_json(job["output"])
        gate = summary.get("validation_gate", {})
        ranker = {
            "trained": True,
            "version": summary.get("version", ""),
            "gate": gate,
            "serves": gate.get("serves", "candidate-order"),
            "promoted": False,
        }
        if summary.get("version"):
            ranker["promoted"], ranker["promotion"] = api.promote("ranker", summary["version"])
    if ranker["promoted"]:
        wait_served(api, probe, lambda a: a.get("served_by") == "ranker", "the ranker")
    elif ranker["serves"] == "candidate-order":
        # docs/ranking.md, "The gate": the rules rung reduced to its candidate term serves
        # the candidate order.
        fleet.restart_ranking(rule_weight_popularity="0", rule_weight_freshness="0")
        wait_served(api, probe, lambda a: a.get("served_by") == "rules", "the rules rung")
    jobs["ranker"] = ranker
    return {"als_version": als_version, "jobs": jobs, "ranker": ranker}


def run(args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = read_movielens(args.dataset, args.format)
    split = make_split(data.ratings, args.protocol)
    items = catalog_payloads(data.movies, data.tags)
    events = event_payloads(split.train)
    excluded = exclusions(split)
    users = sorted(relevant_items(split.test))
    train_counts = Counter(split.train.user_ids.tolist())
    probe = max(users, key=lambda u: (train_counts[u], -u))
    print(
        f"{args.format} / {args.protocol}: {len(items)} items, {len(events)} train events, "
        f"{len(split.test)} test ratings of {len(users)} users"
        + (f", {len(split.validation)} validation ratings (excluded)" if split.validation is not None else ""),
        file=sys.stderr,
    )
    extra_env = {
        "RECFLEET_JOBS_ALS_TUNE_SECONDS": str(args.tune_seconds),
        # One admin key sends every request: no per-key or per-user limit should pace the replay.
        "RECFLEET_GATEWAY_RATE_LIMIT_PER_USER": "100000/minute",
        "RECFLEET_GATEWAY_RATE_LIMIT_PER_KEY": "100000/second",
        # The rule `evaluate` applies, whatever the caller's environment holds.
        "RECFLEET_RANKING_MAX_PER_CATEGORY": str(MAX_PER_CATEGORY),
        "RECFLEET_RANKING_DIVERSITY_WINDOW": str(DIVERSITY_WINDOW),
    }
    ease: list[str] = []
    if args.ease_l2 is not None:
        # EASE fused in as train-als publishes it without a search; evaluate the same.
        extra_env["RECFLEET_JOBS_EASE_L2"] = str(args.ease_l2)
        extra_env["RECFLEET_JOBS_EASE_ALS_WEIGHT"] = str(args.ease_als_weight)
        extra_env["RECFLEET_JOBS_EASE_POPULARITY_PENALTY"] = str(args.ease_popularity_penalty)
        ease = ["--ease-l2", str(args.ease_l2), "--ease-als-weight", str(args.ease_als_weight)]
        ease += ["--ease-popularity-penalty", str(args.ease_popularity_penalty)]
    fleet = ReplayFleet(args.postgres_admin_dsn, args.redis_url, args.shards, extra_env)
    result: dict[str, Any] = {}
    try:
        step = time.perf_counter()
        fleet.start()
        timings["fleet start"] = time.perf_counter() - step
        api = Api(fleet.url, ADMIN_KEY)
        try:
            step = time.perf_counter()
            load_catalog(api, items)
            accepted, rejected = load_events(api, events, args.concurrency)
            stored = wait_stored(fleet.dsn, accepted)
            timings["load"] = time.perf_counter() - step
            print(f"events: {accepted} accepted, {stored} stored, rejected {dict(rejected)}", file=sys.stderr)
            step = time.perf_counter()
            served = retrain(api, fleet, probe, not args.no_ranker, timings)
            timings["retrain"] = time.perf_counter() - step
            passes = [query(api, users, excluded, "online", args.concurrency)]
            if args.diversity_check:
                fleet.restart_ranking(max_per_category=str(DIVERSITY_WINDOW))
                wait_served(api, probe, lambda a: a.get("served_by") in ("ranker", "rules"), "ranking")
                passes.append(query(api, users, excluded, "online, no category cap", args.concurrency, False))
        finally:
            api.close()
        env = fleet.env()
        fleet.stop()
        model = offline_model(served["ranker"], ease)
        step = time.perf_counter()
        rules = {"serving rule": SERVING_RULE}
        if args.diversity_check:
            rules["no category cap"] = []
        offline: dict[str, dict[str, Any]] = {}
        for rule_name, rule in rules.items():
            offline[f"retrained, {rule_name}"] = evaluate_offline(args, model, env, rule=rule)
            if model[1] in ("als", "als+rules"):
                version = served["als_version"]
                offline[f"served version, {rule_name}"] = evaluate_offline(args, model, env, version, rule)
        timings["offline evaluate"] = time.perf_counter() - step
        online = [p.summary(split) for p in passes]
        result = {
            "dataset": args.format,
            "protocol": args.protocol,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {
                "tune_seconds": args.tune_seconds,
                "shards": args.shards,
                "train_ranker": not args.no_ranker,
                "concurrency": args.concurrency,
            },
            "data": {
                "items": len(items),
                "train_events": len(events),
                "events_accepted": accepted,
                "events_stored": stored,
                "events_rejected": dict(rejected),
                "test_ratings": len(split.test),
                "test_users": len(users),
                "validation_ratings": len(split.validation) if split.validation is not None else 0,
            },
            "served": served,
            "offline_model": " ".join(model),
            "online": online,
            "offline": offline,
            "serving_rule": {"max_per_category": MAX_PER_CATEGORY, "diversity_window": DIVERSITY_WINDOW},
            "differences": comparisons(online, offline),
            "timings_seconds": {name: round(value, 1) for name, value in timings.items()},
            "total_seconds": round(time.perf_counter() - started, 1),
            "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        }
    finally:
        fleet.stop()
        if not args.keep:
            fleet.remove()
    return result


def table(result: dict[str, Any]) -> str:
    rows = [(p["label"], p) for p in result["online"]]
    rows += [(f"offline ({name}: {result['offline_model']})", o) for name, o in result["offline"].items()]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':{width}}  ndcg@10  recall@10  users"]
    for label, row in rows:
        lines.append(f"{label:{width}}  {row['ndcg@10']:.4f}   {row['recall@10']:.4f}     {row['users_evaluated']}")
    lines.append("")
    for name, diff in result["differences"].items():
        lines.append(f"{name}: ndcg@10 {diff['ndcg@10']:+.4f}, recall@10 {diff['recall@10']:+.4f}")
    for p in result["online"]:
        lines.append(
            f"{p['label']}: served_by {p['served_by']}, degraded {p['degraded']}, cold start {p['cold_start']},"
            f" short lists {p['short_lists']}, errors {p['errors']}, metadata items {p['metadata_items']}"
            f" ({p['metadata_hits']} hits)"
        )
    return "\n".join(lines)


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(p["label"], p) for p in result["online"]]
    bars += [(f"offline, {name}", o) for name, o in result["offline"].items()]
    metrics = (f"ndcg@{K}", f"recall@{K}")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    width = 0.8 / len(bars)
    for index, (label, row) in enumerate(bars):
        xs = [m + (index - (len(bars) - 1) / 2) * width for m in range(len(metrics))]
        ax.bar(xs, [row[m] for m in metrics], width, label=label)
        for x, m in zip(xs, metrics, strict=True):
            ax.text(x, row[m], f"{row[m]:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_title(f"online vs offline: {result['dataset']} / {result['protocol']} ({result['offline_model']})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "ml-latest-small", help="data set directory")
    parser.add_argument("--format", default="ml-latest-small", choices=FORMATS)
    parser.add_argument("--protocol", default="recbole", choices=PROTOCOLS)
    parser.add_argument(
        "--tune-seconds", type=float, default=0.0, help="train-als and evaluate: hyper-parameter search budget"
    )
    parser.add_argument("--no-ranker", action="store_true", help="skip train-ranker (the rules rung serves)")
    parser.add_argument(
        "--ease-l2", type=float, default=None, help="fuse EASE in with this l2 (train-als and evaluate alike)"
    )
    parser.add_argument("--ease-als-weight", type=float, default=0.5, help="with --ease-l2: the fusion's ALS weight")
    parser.add_argument(
        "--ease-popularity-penalty", type=float, default=0.0, help="with --ease-l2: the fusion's popularity penalty"
    )
    parser.add_argument(
        "--diversity-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also query with ranking's category cap lifted",
    )
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight while loading and querying")
    parser.add_argument(
        "--postgres-admin-dsn",
        default=os.environ.get("RECFLEET_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a server where the bench may create (and drop) a database of its own",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("RECFLEET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"),
        help="a Redis database the bench owns (emptied before and after)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and state directory")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    name = f"replay_quality_{args.format}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    draw(result, RESULTS / f"{name}.png")
    print(table(result))
    print(f"total {result['total_seconds']:.0f}s; wrote {RESULTS / (name + '.json')} and .png")


if __name__ == "__main__":
    main()
