"""The table spec of ``cxrfuse ingest csv`` read from YAML (the model is
:class:`cxrfuse.data.table_ingest.TableSpec`; relative paths are taken from the spec's folder)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cxrfuse.config.common import parse_override, read_yaml_config, set_dotted, validate_config
from cxrfuse.data.table_ingest import TableSpec


def validate_table_spec(raw: Mapping[str, Any], source: str = "spec", base: Path | None = None) -> TableSpec:
    """A :class:`TableSpec` from a mapping; ConfigError names ``source`` and the bad key path."""
    spec = validate_config(TableSpec, raw, source)
    return spec.resolve_paths(base) if base is not None else spec


def load_table_spec(path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                    sets: Iterable[str] = ()) -> TableSpec:  # fmt: skip
    """A table spec from a YAML file (or none: ``overrides`` only), with top-level ``overrides``
    (the CLI flags) and ``--set key.path=value`` applied."""
    raw: dict[str, Any] = read_yaml_config(Path(path)) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    for text in sets:
        set_dotted(raw, *parse_override(text))
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    return validate_table_spec(raw, str(path) if path is not None else "ingest csv options", base)
