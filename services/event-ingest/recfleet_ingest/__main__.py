"""`python -m recfleet_ingest`: the event-ingest gRPC API."""

from recfleet_runtime.grpcserver import run_service, serve
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.tracing import configure_tracing, instrument_psycopg

from .app import IngestApi
from .settings import IngestSettings


async def main() -> None:
    settings = IngestSettings()
    configure_logging("event-ingest", settings.log_level, settings.track)
    configure_tracing("event-ingest")
    instrument_psycopg()
    api = IngestApi(settings)
    await serve(api.service, api.warm_up, background=[api.refresh_erased_forever], close=api.close)


if __name__ == "__main__":
    run_service(main)
