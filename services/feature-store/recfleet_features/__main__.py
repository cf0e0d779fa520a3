"""`python -m recfleet_features`: the feature-store gRPC service."""

from recfleet_runtime.grpcserver import run_service, serve
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.tracing import configure_tracing

from .app import FeatureStoreApp
from .settings import FeatureSettings


async def main() -> None:
    settings = FeatureSettings()
    configure_logging("feature-store", settings.log_level, settings.track)
    configure_tracing("feature-store")
    app = FeatureStoreApp(settings)
    await serve(app.service, app.warm_up, background=[app.watch_stores], close=app.close)


if __name__ == "__main__":
    run_service(main)
