"""Where the time goes: py-spy collapsed stacks summed into cost categories.

Reads the native collapsed stacks that `profile_fleet.py --format raw --native --threads
--full-filenames` writes, drops the samples of threads blocked in the kernel (epoll/poll
waits, lock and condition waits: idle, not CPU), and gives each remaining sample to one
category: walking from the innermost frame outwards, the first frame that belongs to a
known library or to project code decides (C frames of libc or CPython, and standard
library helpers such as contextlib or uuid, pass the sample on to their caller). The
shares are of the process's busy samples, so they split the CPU that /proc measures;
with `--cpu bench/results/fleet_cpu.json` they are also printed as ms per request.

    .venv/bin/python bench/profile_summary.py bench/results/profiles/*_before_native.collapsed.gz \\
        --cpu bench/results/fleet_cpu.json --markdown
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import Counter
from pathlib import Path

IDLE = re.compile(
    r"^(epoll_wait|epoll_pwait|poll|select|pselect6?|ppoll|nanosleep|clock_nanosleep|sem_wait|sem_timedwait|"
    r"pthread_cond_wait|pthread_cond_timedwait|PyThread_acquire_lock_timed|take_gil|PyCOND_TIMEDWAIT|"
    r"__futex_abstimed_wait\w*) "
)

# (category, pattern on one frame): the first rule a frame matches names its category.
RULES: list[tuple[str, re.Pattern]] = [
    ("tracing (OpenTelemetry, FastAPI telemetry)", re.compile(r"opentelemetry|OpenTelemetry|fastapi/telemetry")),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client")),
    ("logging (structlog)", re.compile(r"structlog|/logging/")),
    ("protobuf (upb: build, read, (de)serialise)", re.compile(r"_message\.abi3\.so|google/protobuf|\bupb_|PyUpb")),
    ("gRPC (grpc.aio, cygrpc, core)", re.compile(r"/grpc/|cygrpc|libgrpc")),
    ("Redis client", re.compile(r"/redis/|hiredis")),
    (
        "FastAPI/starlette/pydantic (routing, params, middleware)",
        re.compile(r"/fastapi/|/starlette/|/pydantic|/anyio/"),
    ),
    ("HTTP server (uvicorn, httptools)", re.compile(r"/uvicorn/|httptools")),
    ("JSON (orjson, json)", re.compile(r"orjson|/json/|_json\.c")),
    ("FAISS search", re.compile(r"faiss|libgomp|openblas")),
    ("LightGBM predict", re.compile(r"lightgbm")),
    ("numpy", re.compile(r"numpy|_multiarray|libopenblas")),
    ("Postgres client", re.compile(r"psycopg")),
    ("Kafka client", re.compile(r"aiokafka|confluent_kafka|librdkafka")),
    (
        "asyncio / event loop (uvloop, selectors, tasks, futures)",
        re.compile(r"/asyncio/|_asynciomodule\.c|uvloop|\(loop\.c|selectmodule\.c|selectors\.py|^uv_|^uv__"),
    ),
    ("gateway code (recfleet_gateway)", re.compile(r"recfleet_gateway")),
    ("candidate-gen code (recfleet_candidates)", re.compile(r"recfleet_candidates")),
    ("ranking service code (recfleet_ranking)", re.compile(r"recfleet_ranking")),
    ("feature-store code (recfleet_features)", re.compile(r"recfleet_features")),
    ("model code (recfleet_models: features, rules, shards)", re.compile(r"recfleet_models")),
    ("runtime plumbing (recfleet_runtime: server/client wrappers)", re.compile(r"recfleet_runtime")),
    ("store code (recfleet_store)", re.compile(r"recfleet_store")),
]
UNATTRIBUTED = "other (CPython, libc, stdlib with no project caller)"
SERVICE_OF = {
    "gateway": "gateway",
    "shard0": "candidate-gen-0",
    "shard1": "candidate-gen-1",
    "ranking": "ranking",
    "feature_store": "feature-store",
}


def category(frames: list[str]) -> tuple[str, str]:
    """(category, the frame that decided it), from the innermost frame outwards."""
    for frame in reversed(frames):
        for name, pattern in RULES:
            if pattern.search(frame):
                return name, frame
    return UNATTRIBUTED, frames[-1] if frames else ""


def short(frame: str) -> str:
    """`func (…/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    path = re.sub(r"^.*(site-packages|python3\.\d+|services/[\w-]+|libs/\w+)/", "", path)
    return f"{func} ({path})"


def summarise(path: Path, inclusive: dict[str, re.Pattern] | None = None) -> dict:
    inclusive = inclusive or {}
    within: Counter = Counter()
    busy: Counter = Counter()
    deciding: Counter = Counter()
    idle = total = 0
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        total += samples
        if any(IDLE.match(frame) for frame in frames[-4:]):
            idle += samples
            continue
        name, frame = category(frames)
        busy[name] += samples
        for label, pattern in inclusive.items():
            if any(pattern.search(f) for f in frames):
                within[label] += samples
        deciding[(name, short(frame))] += samples
    busy_total = sum(busy.values())
    return {
        "profile": str(path),
        "samples": total,
        "idle_samples": idle,
        "busy_samples": busy_total,
        "shares": {name: count / busy_total for name, count in busy.most_common()},
        "inclusive": {label: within[label] / busy_total for label in inclusive},
        "top_frames": [
            {"category": name, "frame": frame, "share": count / busy_total}
            for (name, frame), count in deciding.most_common(15)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--cpu", type=Path, help="fleet_cpu.py's JSON: shares also as CPU ms per request")
    parser.add_argument("--markdown", action="store_true", help="print tables for bench/README.md")
    parser.add_argument(
        "--inclusive",
        action="append",
        default=[],
        metavar="LABEL=REGEX",
        help="also the share of busy samples with any frame matching REGEX (whatever runs under it)",
    )
    parser.add_argument("--min-share", type=float, default=0.02, help="fold smaller categories into 'the rest'")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "profiles" / "where_the_time_goes.json",
        help="where the summary's JSON goes",
    )
    args = parser.parse_args()
    cpu = json.loads(args.cpu.read_text())["cpu_ms_per_request"] if args.cpu else {}
    inclusive = {label: re.compile(rx) for label, rx in (item.split("=", 1) for item in args.inclusive)}
    summaries = []
    for path in args.profiles:
        summary = summarise(path, inclusive)
        key = re.sub(r"_before.*|_after.*", "", path.name.split(".")[0])
        service = SERVICE_OF.get(key, key)
        summary["service"] = service
        summary["cpu_ms_per_request"] = cpu.get(service)
        summaries.append(summary)
        ms = summary["cpu_ms_per_request"]
        head = f"{service}: {summary['busy_samples']} busy of {summary['samples']} samples"
        head += f", {ms:.2f} CPU ms per request" if ms else ""
        print(f"\n### {head}\n" if args.markdown else f"\n{head}")
        if args.markdown:
            print("| cost | share of CPU |" + (" ms per request |" if ms else ""))
            print("|---|---|" + ("---|" if ms else ""))
        rest = 0.0
        for name, share in summary["shares"].items():
            if share < args.min_share:
                rest += share
                continue
            cells = [name, f"{share:.0%}"] + ([f"{share * ms:.2f}"] if ms else [])
            print("| " + " | ".join(cells) + " |" if args.markdown else "  " + "  ".join(reversed(cells)))
        if rest:
            cells = [f"the rest (each < {args.min_share:.0%})", f"{rest:.0%}"] + ([f"{rest * ms:.2f}"] if ms else [])
            print("| " + " | ".join(cells) + " |" if args.markdown else "  " + "  ".join(reversed(cells)))
        for label, share in summary["inclusive"].items():
            if share:
                print(f"  inclusive: {share:.0%} under {label}")
        if not args.markdown:
            print("  top deciding frames:")
            for row in summary["top_frames"]:
                print(f"    {row['share']:5.1%}  {row['category'][:28]:<28}  {row['frame'][:110]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
