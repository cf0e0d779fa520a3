"""Tracing set-up in a fresh interpreter each time (the tracer provider is process-global)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from recfleet_runtime import tracing
tracing.configure_tracing("probe")
tracing.instrument_redis()
tracing.instrument_psycopg()
print(tracing.exporting(), RedisInstrumentor().is_instrumented_by_opentelemetry,
      PsycopgInstrumentor().is_instrumented_by_opentelemetry)
"""


@pytest.mark.parametrize(
    ("exporter", "expected"),
    [(None, "False False False"), ("none", "False False False"), ("console", "True True True")],
)
def test_store_clients_are_instrumented_only_when_spans_are_exported(exporter, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if exporter:
        env["OTEL_TRACES_EXPORTER"] = exporter
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == expected
