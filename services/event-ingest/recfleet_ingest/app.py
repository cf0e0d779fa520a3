"""Builds the event-ingest API from settings: gRPC service, producer, Postgres pool,
erased-users cache. `__main__` serves it; tests start it in-process on port 0."""

from __future__ import annotations

import asyncio

import psycopg
import structlog
from kafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool
from recfleet.ingest.v1 import ingest_pb2_grpc
from recfleet_runtime.grpcserver import GrpcService
from recfleet_store.kafka import TopicsMissing, missing_topics
from tenacity import AsyncRetrying, RetryCallState, stop_after_delay, wait_exponential

from .adapters.postgres import ErasureStore
from .adapters.producer import EventProducer
from .erased import ErasedUsers
from .roles import fleet_topic_names
from .servicer import SERVICE_NAME, EventIngestServicer
from .settings import IngestSettings

log = structlog.get_logger("recfleet.ingest")


class IngestApi:
    """The API process's parts and their life cycle."""

    def __init__(self, settings: IngestSettings, warm_up_seconds: float = 120.0):
        self.settings = settings
        self.warm_up_seconds = warm_up_seconds
        self.service = GrpcService("event-ingest", settings, [SERVICE_NAME])
        self.producer = EventProducer(settings.kafka_bootstrap_servers, settings.produce_timeout_seconds)
        self.pool = AsyncConnectionPool(settings.postgres_dsn, min_size=1, max_size=4, open=False)
        hash_key = settings.erasure_hash_key.get_secret_value()
        self.erased = ErasedUsers(settings.erased_refresh_seconds, hash_key)
        self.servicer = EventIngestServicer(
            self.producer,
            ErasureStore(self.pool, hash_key),
            self.erased,
            settings.events_topic,
            settings.users_topic,
            settings.max_batch_events,
        )
        ingest_pb2_grpc.add_EventIngestServicer_to_server(self.servicer, self.service.server)

    async def _require_topics(self) -> None:
        """The topics are made by `recfleet-jobs create-topics` (a Helm hook), never here."""
        bootstrap = self.settings.kafka_bootstrap_servers
        missing = await asyncio.to_thread(
            missing_topics, bootstrap, fleet_topic_names(self.settings), self.settings.produce_timeout_seconds
        )
        if missing:
            raise TopicsMissing(bootstrap, missing)

    async def warm_up(self) -> bool:
        """SERVING only once topics exist, the producer has broker metadata and the
        erased-users list is loaded."""

        def log_retry(state: RetryCallState) -> None:
            # tenacity calls before_sleep after a failed attempt: there is an outcome.
            assert state.outcome is not None
            error = state.outcome.exception()
            event = "waiting for topics" if isinstance(error, TopicsMissing) else "warm-up retrying"
            log.warning(event, error=str(error), attempt=state.attempt_number)

        try:
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.2, max=2.0),
                stop=stop_after_delay(self.warm_up_seconds),
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(self.producer.connect)
                    await self._require_topics()
                    await self.pool.open(wait=True, timeout=10)
                    self.erased.replace(await self.servicer.erasures.erased_users())
        except (KafkaError, TopicsMissing, psycopg.Error, OSError) as error:
            log.error("warm-up failed", error=str(error))
            return False
        return True

    async def refresh_erased_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.erased_refresh_seconds)
            try:
                self.erased.replace(await self.servicer.erasures.erased_users())
            except psycopg.Error as error:
                log.warning("erased users not refreshed", error=str(error))

    async def close(self) -> None:
        """Flush the producer (pending records are delivered), then close the pool."""
        await asyncio.to_thread(self.producer.close)
        await self.pool.close()
