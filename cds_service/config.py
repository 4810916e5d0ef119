"""Administrator configuration: ``hooks/settings.yaml`` plus one file per service in ``hooks/services/``.

A service's effective settings are the shared settings with the service file's ``thresholds``, ``findings``,
``scope``, ``hold_repeats`` and ``min_indicator`` laid over them; for one caller, its tenant's overrides go
on top, then the tenant's overrides for that service alone (``tenants.<t>.services.<id>``;
``Config.settings_for``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cds_service.yaml_lines import compose, duplicate_keys

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "hooks"
OVERRIDABLE = ("scope", "thresholds", "findings", "hold_repeats", "min_indicator")
ENVIRONMENT = {
    # Deployment-specific settings that may come from the environment (which wins over settings.yaml), so
    # one configuration folder serves every host and no secret has to live in the YAML. The admin token is
    # CDS_ADMIN_TOKEN (admin.py); port, host, workers and threads are CDS_PORT, CDS_HOST, CDS_WORKERS and
    # CDS_THREADS (cli.py).
    "CDS_DATABASE_URL": ("feedback", "database_url"),
    "CDS_PUBLIC_BASE_URL": ("server", "public_base_url"),
}


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, each naming its file and path."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it; nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str | None
    settings: Mapping[str, Any]
    """Effective settings for this service: shared settings with the service's overrides."""


@dataclass(frozen=True)
class Config:
    directory: Path
    settings: Mapping[str, Any]
    services: Mapping[str, Service] = field(default_factory=dict)
    _per_tenant: dict[tuple[str, str | None], Mapping[str, Any]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def section(self, name: str) -> Mapping[str, Any]:
        return self.settings.get(name) or {}

    def tenant_overrides(self, tenant: str | None, service_id: str | None = None) -> Mapping[str, Any]:
        """The ``tenants:`` entry for ``tenant`` (empty for no tenant or one without overrides).

        With ``service_id``, the entry's own ``services.<service_id>`` overrides are laid over the rest, so a
        tenant can tune one service (the monitoring service's window) without touching the order services.
        """
        entry = (self.section("tenants").get(tenant) or {}) if tenant else {}
        if service_id is None or "services" not in entry:
            return entry
        shared = {k: v for k, v in entry.items() if k != "services"}
        return deep_merge(shared, (entry.get("services") or {}).get(service_id) or {})

    def settings_for(self, service: Service | str, tenant: str | None) -> Mapping[str, Any]:
        """Effective settings for one service and caller: shared < service file < the tenant's overrides.

        Cached for the life of this Config (that is, of one Runtime); a reload starts afresh.
        """
        service = service if isinstance(service, Service) else self.services[service]
        overrides = self.tenant_overrides(tenant, service.id)
        if not overrides:
            return service.settings
        key = (service.id, tenant)
        if key not in self._per_tenant:
            self._per_tenant[key] = deep_merge(service.settings, overrides)
        return self._per_tenant[key]


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text)
        twice = duplicate_keys(compose(text))
        if twice:
            where = ((path, line, ".".join(map(str, keys)), first) for keys, line, first in twice)
            raise ConfigError(
                [f"{p}:{n}: {k}: written twice (first on line {f}); keep one" for p, n, k, f in where]
            )
        return document
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"{path}{at}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def config_dir(directory: str | Path | None = None) -> Path:
    return Path(directory or os.environ.get("CDS_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


DOCS_PATH = "/docs"
"""Where the service serves its own documentation (``cds_service.docs``): the cards' default source link."""


def _default_source_url(settings: dict) -> None:
    """Cards link to this service's own documentation, ``public_base_url`` + /docs, unless told otherwise."""
    cards, server = settings.get("cards"), settings.get("server")
    if isinstance(cards, dict) and not cards.get("source_url") and isinstance(server, dict):
        cards["source_url"] = str(server["public_base_url"]).rstrip("/") + DOCS_PATH


def with_environment(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the values set in the environment (``ENVIRONMENT``) laid over them."""
    for variable, (section, key) in ENVIRONMENT.items():
        value = os.environ.get(variable)
        if value:
            settings = {**settings, section: {**(settings.get(section) or {}), key: value}}
    return settings


def load_config(directory: str | Path | None = None) -> Config:
    """Read and check the configuration in ``directory`` (default ``hooks/``); ConfigError if unusable."""
    root = config_dir(directory)
    settings_path = root / "settings.yaml"
    if not settings_path.is_file():
        raise ConfigError([f"{settings_path}: missing (the shared settings file)"])
    settings = _read_yaml(settings_path)
    if not isinstance(settings, dict):
        raise ConfigError([f"{settings_path}: must be a mapping of settings"])

    from cds_service.config_schema import (  # imported here: avoids an import cycle
        check_service,
        check_settings,
        check_thresholds,
        where,
    )

    settings = with_environment(settings)
    problems = check_settings(settings, settings_path)
    if not problems:
        _default_source_url(settings)
    services: dict[str, Service] = {}
    service_files: dict[str, Path] = {}
    known_ids: set[str] = set()  # every service file's id, enabled or not
    for path in sorted((root / "services").glob("*.yaml")):
        raw = _read_yaml(path)
        found = check_service(raw, path)
        problems.extend(found)
        if found:
            continue
        known_ids.add(raw["id"])
        if raw.get("enabled", True) is False:
            continue
        if raw["id"] in services:
            problems.append(f"{path}: id: {raw['id']!r} is already used by another service file")
            continue
        overrides = {k: raw[k] for k in OVERRIDABLE if k in raw}
        services[raw["id"]] = Service(
            id=raw["id"],
            hook=raw["hook"],
            title=raw.get("title", raw["id"]),
            description=raw["description"],
            usage_requirements=raw.get("usageRequirements"),
            settings=deep_merge(settings, overrides),
        )
        service_files[raw["id"]] = path
    if not problems:  # every file has the right shape: check what the files say together
        problems += _check_valuesets(settings, settings_path)
        sound = []  # services whose own thresholds agree; a tenant is checked on top of those
        for service in services.values():
            found, own = [], service.settings["thresholds"]
            if own != settings["thresholds"]:
                found = check_thresholds(own, service_files[service.id], ["thresholds"])
            problems += found
            sound += [] if found else [service]
        for tenant, overrides in (settings.get("tenants") or {}).items():
            for service in sound if overrides.get("thresholds") else ():
                shared = {k: v for k, v in overrides.items() if k != "services"}
                merged = deep_merge(service.settings, shared)["thresholds"]
                problems += check_thresholds(merged, settings_path, ["tenants", tenant, "thresholds"])
            for service_id, own in (overrides.get("services") or {}).items():
                if service_id not in known_ids:
                    at = where(settings_path, ["tenants", tenant, "services", service_id])
                    problems.append(
                        f"{at}: tenants.{tenant}.services.{service_id}: not a service of hooks/services/; "
                        f"known: {', '.join(sorted(known_ids))}"
                    )
                for service in [s for s in sound if s.id == service_id and (own or {}).get("thresholds")]:
                    shared = {k: v for k, v in overrides.items() if k != "services"}
                    merged = deep_merge(deep_merge(service.settings, shared), own)["thresholds"]
                    where_ = ["tenants", tenant, "services", service_id, "thresholds"]
                    problems += check_thresholds(merged, settings_path, where_)
        problems = list(dict.fromkeys(problems))  # a tenant's problem shows once, not once per service
    if problems:
        raise ConfigError(problems)
    return Config(directory=root, settings=settings, services=services)


def _check_valuesets(settings: Mapping[str, Any], settings_path: Path) -> list[str]:
    """Every value set named in ``valuesets.local_codes`` exists, and the chosen value sets load."""
    from cds_service.config_schema import where  # imported here: avoids an import cycle
    from cds_service.terminology import DEFAULT_DIR, Terminology

    valuesets = settings.get("valuesets") or {}
    known = sorted(p.stem for p in DEFAULT_DIR.glob("*.json"))
    problems = [
        f"{where(settings_path, ['valuesets', 'local_codes', name])}: valuesets.local_codes.{name}: "
        f"not a value set of the service; known: {', '.join(known)}"
        for name in valuesets.get("local_codes") or {}
        if name not in known
    ]
    if not problems:
        try:
            Terminology.load(include=valuesets.get("include", ()), local_codes=valuesets.get("local_codes"))
        except ValueError as error:
            problems.append(f"{where(settings_path, ['valuesets'])}: valuesets: {error}")
    return problems
