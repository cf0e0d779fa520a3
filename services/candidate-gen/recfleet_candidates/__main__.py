"""`python -m recfleet_candidates`: serve one FAISS shard."""

from __future__ import annotations

from recfleet_runtime.grpcserver import run_service, serve
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.tracing import configure_tracing, instrument_psycopg

from .app import CandidateApp
from .settings import CandidateSettings


async def main() -> None:
    settings = CandidateSettings()
    configure_logging("candidate-gen", settings.log_level, settings.track)
    configure_tracing("candidate-gen")
    instrument_psycopg()
    app = CandidateApp(settings)
    await serve(app.service, app.warm_up, [app.poll_forever], close=app.close)


if __name__ == "__main__":
    run_service(main)
