"""What lives as long as a configuration does: code sets, prefetch templates, HTTP pool, threads, database.

A reload builds a new Runtime and swaps it in; a request keeps the Runtime it started with, so in-flight
requests finish on the old configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import requests

from cds_service.alert_memory import AlertMemory, longest_window
from cds_service.auth import PROCESS_KEYS, ReplayStore, Verifier
from cds_service.config import Config, Service
from cds_service.evaluations import EvaluationCache
from cds_service.fhir_client import shared_session
from cds_service.fhir_policy import FhirPolicy
from cds_service.gather import ServerExecutors
from cds_service.prefetch import templates
from cds_service.rules import NEEDS
from cds_service.services import SPECS, spec_for
from cds_service.storage import Store, engine_url, make_engine
from cds_service.terminology import Terminology


@dataclass
class Runtime:
    config: Config
    dev: bool = False
    store: Store | None = None
    alert_memory: AlertMemory | None = None
    """Findings already shown (order-select → order-sign), on the service's database unless given."""
    session: requests.Session = field(default_factory=shared_session)
    executors: ServerExecutors = field(default_factory=ServerExecutors)
    """Threads for FHIR calls, a few per FHIR server (``fhir.max_calls_per_server``)."""
    evaluations: EvaluationCache = field(default_factory=EvaluationCache)
    """Evaluations of content sent again within the minute (order-select, then order-sign)."""

    @classmethod
    def from_config(
        cls,
        config: Config,
        dev: bool = False,
        store: Store | None = None,
        previous: Runtime | None = None,
        alert_memory: AlertMemory | None = None,
    ) -> Runtime:
        """A Runtime for ``config``; on a reload, ``previous`` lends what does not depend on the files.

        The HTTP session, the FHIR threads (unless ``fhir.max_calls_per_server`` changed) and the database
        engine with its connection pool are kept across reloads, so a reload opens no new pool and leaks
        none; a changed database URL gets a new engine and the old one's idle connections are closed.
        """
        url = config.section("feedback")["database_url"]
        threads = config.section("fhir").get("max_calls_per_server", 8)
        if previous is None:
            runtime = cls(config=config, dev=dev, store=store, executors=ServerExecutors(threads))
        else:
            same_db = (
                store is None and previous.store is not None and previous.store.engine.url == engine_url(url)
            )
            same_threads = previous.executors.threads == threads
            runtime = cls(
                config=config,
                dev=dev,
                store=store or (previous.store if same_db else None),
                session=previous.session,
                executors=previous.executors if same_threads else ServerExecutors(threads),
            )
        if runtime.store is None:
            runtime.store = Store(make_engine(url))
        if previous is not None and previous.store is not None and previous.store is not runtime.store:
            previous.store.engine.dispose()  # connections in use by in-flight requests close when returned
        runtime.alert_memory = alert_memory or AlertMemory(runtime.store.engine, keep=longest_window(config))
        # Build these now, so that a bad configuration fails at start (or on reload), not on a call.
        runtime.terminology  # noqa: B018
        if not dev:
            runtime.verifier  # noqa: B018
        return runtime

    @cached_property
    def verifier(self) -> Verifier:
        """Checks callers' JWTs; the jti replay table is on the service's database, shared by all workers."""
        assert self.store is not None  # set by from_config
        return Verifier.from_config(self.config, ReplayStore(self.store.engine), PROCESS_KEYS, dev=self.dev)

    @cached_property
    def fhir_policy(self) -> FhirPolicy:
        return FhirPolicy(dev=self.dev)

    @cached_property
    def terminology(self) -> Terminology:
        valuesets = self.config.section("valuesets")
        return Terminology.load(
            include=valuesets.get("include", ()), local_codes=valuesets.get("local_codes")
        )

    @cached_property
    def prefetch_templates(self) -> dict[str, str]:
        """The order services' templates (everything the whole catalog reads)."""
        return templates(NEEDS, self.terminology)

    @cached_property
    def _templates_by_spec(self) -> dict[str, dict[str, str]]:
        return {
            spec.id: templates(spec.needs, self.terminology, stored_statuses=spec.stored_statuses)
            for spec in SPECS
        }

    def gather_templates_for(self, service: Service) -> dict[str, str]:
        """Every query one service may run: exactly what the findings its spec runs read."""
        return self._templates_by_spec[spec_for(service.id, service.hook).id]

    def templates_for(self, service: Service) -> dict[str, str]:
        """The prefetch templates discovery offers for one service: what it gathers, except the keys its spec
        reads by FHIR callback only once its trigger fires (``ServiceSpec.by_callback``)."""
        spec = spec_for(service.id, service.hook)
        return {k: v for k, v in self._templates_by_spec[spec.id].items() if k not in spec.by_callback}

    def service(self, service_id: str) -> Service | None:
        return self.config.services.get(service_id)

    def close(self) -> None:
        self.executors.shutdown()
        self.session.close()
