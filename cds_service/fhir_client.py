"""Calls back to the EHR's FHIR server, always inside one deadline per hook request.

Each request gets a ``FhirClient`` bound to the caller's ``fhirServer``, its access token and a deadline.
Nothing here may outlive the deadline by more than a socket timeout, follow a redirect, send the token
anywhere but the server it was issued for, or read an unbounded body. Errors come out as ``FhirError`` with a
reason that is safe to log (never the token).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

FHIR_JSON = "application/fhir+json, application/json;q=0.9"


class FhirError(Exception):
    """The FHIR server could not give the data: timeout, refusal, error status, garbage or a policy block."""


def shared_session() -> requests.Session:
    """One connection pool per process, shared by all requests; credentials are set per call, never here."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # proxies from the environment must not see patient data or tokens
    return session


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


@dataclass
class FhirClient:
    base_url: str
    token: str | None
    session: requests.Session
    deadline: float
    """``time.monotonic()`` value after which no call starts and running reads are cut off."""
    page_cap: int = 10
    max_bytes: int = 20_000_000

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/") + "/"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def url(self, query: str) -> str:
        return urljoin(self.base_url, query.lstrip("/"))

    def get(self, url: str) -> dict | None:
        """GET one FHIR JSON document; None for 404/410. The URL must be on the FHIR server's origin."""
        if origin(url) != origin(self.base_url):
            raise FhirError("link leads off the FHIR server; not followed")
        remaining = self.remaining()
        if remaining <= 0:
            raise FhirError("deadline passed")
        headers = {"Accept": FHIR_JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with self.session.get(
                url,
                headers=headers,
                timeout=(min(remaining, 2.0), remaining),
                allow_redirects=False,
                stream=True,
            ) as response:
                if response.status_code in (404, 410):
                    return None
                if 300 <= response.status_code < 400:
                    raise FhirError(f"HTTP {response.status_code} redirect; redirects are not followed")
                if response.status_code != 200:
                    raise FhirError(f"HTTP {response.status_code}")
                body = self._read_body(response)
        except requests.Timeout:
            raise FhirError("timed out") from None
        except requests.RequestException as exc:
            raise FhirError(f"connection failed ({type(exc).__name__})") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise FhirError("response is not JSON") from None
        if not isinstance(document, dict) or "resourceType" not in document:
            raise FhirError("response is not a FHIR resource")
        return document

    def _read_body(self, response: requests.Response) -> bytes:
        try:
            return read_capped(response, self.max_bytes, in_time=lambda: self.remaining() > 0)
        except BodyTooLarge as error:
            raise FhirError(str(error)) from None
        except TimeoutError:
            raise FhirError("timed out") from None

    def read(self, query: str) -> dict | None:
        """A read such as ``Patient/123``: the resource, or None if the server has none."""
        document = self.get(self.url(query))
        if document is not None and document.get("resourceType") == "OperationOutcome":
            raise FhirError("server answered with an OperationOutcome")
        return document

    def search(self, query: str) -> list[dict]:
        """Every resource a search returns, following ``next`` links up to the page cap."""
        return self.rest_of(self.get(self.url(query)))

    def rest_of(self, bundle: dict | None) -> list[dict]:
        """The matches of a searchset Bundle and of the pages after it (completes a partial prefetch)."""
        resources: list[dict] = []
        pages = 0
        while bundle is not None:
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(f"search answered with {bundle.get('resourceType')!r}, not a Bundle")
            resources.extend(bundle_resources(bundle))
            pages += 1
            next_url = next_link(bundle)
            if next_url is None:
                break
            if pages >= self.page_cap:
                raise FhirError(f"more than {self.page_cap} pages")
            bundle = self.get(urljoin(self.base_url, next_url))
        return resources


class BodyTooLarge(ValueError):
    """A response body over the caller's byte limit (declared or streamed)."""


def read_capped(response: requests.Response, max_bytes: int, in_time=lambda: True) -> bytes:
    """A streamed response's body, refusing more than ``max_bytes``; TimeoutError once ``in_time()`` is false.

    Every body from a server the service does not control (FHIR servers, JWKS hosts) is read through here.
    """
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"response larger than {max_bytes} bytes")
    chunks, size = [], 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"response larger than {max_bytes} bytes")
        if not in_time():
            raise TimeoutError
        chunks.append(chunk)
    return b"".join(chunks)


def bundle_resources(bundle: Mapping) -> list[dict]:
    """The resources of a Bundle's entries, without OperationOutcome entries (``search.mode = outcome``)."""
    found = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") not in (None, "OperationOutcome"):
            found.append(resource)
    return found


def next_link(bundle: Mapping) -> str | None:
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None
