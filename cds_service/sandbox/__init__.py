"""The sandbox EHR: a fixture FHIR server and the CDS Hooks requests an EHR would send."""

from cds_service.sandbox.fhir_server import Faults, create_fhir_app, serve_in_thread
from cds_service.sandbox.requests import (
    build_request,
    build_request_from_bundle,
    fill_prefetch,
    parse_query,
    substitute_tokens,
)
from cds_service.sandbox.store import FhirStore, SearchError

__all__ = [
    "Faults",
    "FhirStore",
    "SearchError",
    "build_request",
    "build_request_from_bundle",
    "create_fhir_app",
    "fill_prefetch",
    "parse_query",
    "serve_in_thread",
    "substitute_tokens",
]
