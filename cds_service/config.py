"""Administrator configuration: ``hooks/settings.yaml`` plus one file per service in ``hooks/services/``.

A service's effective settings are the shared settings with the service file's ``thresholds``, ``findings``
and ``scope`` laid over them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "hooks"
OVERRIDABLE = ("scope", "thresholds", "findings")


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

    def section(self, name: str) -> Mapping[str, Any]:
        return self.settings.get(name) or {}


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def config_dir(directory: str | Path | None = None) -> Path:
    return Path(directory or os.environ.get("CDS_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def load_config(directory: str | Path | None = None) -> Config:
    """Read and check the configuration in ``directory`` (default ``hooks/``); raise ConfigError if unusable."""
    root = config_dir(directory)
    settings_path = root / "settings.yaml"
    if not settings_path.is_file():
        raise ConfigError([f"{settings_path}: missing (the shared settings file)"])
    settings = _read_yaml(settings_path)
    if not isinstance(settings, dict):
        raise ConfigError([f"{settings_path}: must be a mapping of settings"])

    from cds_service.config_schema import check_service, check_settings  # noqa: PLC0415 - avoids an import cycle

    problems = check_settings(settings, settings_path)
    services: dict[str, Service] = {}
    for path in sorted((root / "services").glob("*.yaml")):
        raw = _read_yaml(path)
        found = check_service(raw, path)
        problems.extend(found)
        if found:
            continue
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
    if problems:
        raise ConfigError(problems)
    return Config(directory=root, settings=settings, services=services)
