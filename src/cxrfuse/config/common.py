"""What every YAML config shares: reading the file, ``--set key.path=value`` overrides, and
validation errors that name the file, the key path and what is allowed."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from cxrfuse.problems import ConfigError


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated,
    NaN/infinity refused, and ``true``/``false`` are not numbers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _unwrap(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and (int in kinds or float in kinds):
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


MAX_SEED = 2**32 - 1
"""Random seeds lie in 0 .. 2**32 - 1 (what numpy takes)."""


def check_folder_name(value: str, what: str = "run") -> str:
    """A name that becomes one folder under ``runs_dir`` (no ``/``, no ``..``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", value):
        raise ValueError(f"a {what} name is letters, digits and . _ = + - (it names a folder "
                         f"under runs_dir), got {value!r}")
    return value


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without aliases: a 1 KB alias bomb would expand without bound."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in cxrfuse configs: write the "
                "values out", event.start_mark)  # fmt: skip
        return super().compose_node(parent, index)


def load_yaml(text: str | bytes) -> Any:
    """YAML as :func:`yaml.safe_load` reads it, aliases refused."""
    return yaml.load(text, Loader=_NoAliasLoader)


M = TypeVar("M", bound=BaseModel)


def get_dotted(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, creating the missing levels."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"training.loss.kind=focal"`` -> ``("training.loss.kind", "focal")``; the value is YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. training.lr=0.001")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from err
    except RecursionError as err:
        raise ConfigError(f"--set {key}=...: the value is nested too deeply") from err
    return key, parsed


def _unwrap(annotation: Any) -> list[Any]:
    """The members of a Union/Optional/Annotated annotation."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _unwrap(a)]
    return [annotation]


def _resolve(root: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], type[BaseModel] | None]:
    """The key path of an error location without union branch tags, and the model it ends in."""
    path: list[str] = []
    current: list[Any] = [root]
    for part in loc:
        models = [c for c in current if isinstance(c, type) and issubclass(c, BaseModel)]
        model = next((m for m in models if isinstance(part, str) and part in m.model_fields), None)
        if model is not None:
            path.append(part)
            current = _unwrap(model.model_fields[part].annotation)
        elif isinstance(part, int):
            path.append(str(part))
            lists = [c for c in current if typing.get_origin(c) in (list, tuple)]
            args = typing.get_args(lists[0]) if lists else ()
            current = _unwrap(args[0]) if args else []
        elif isinstance(part, str) and any(typing.get_origin(c) is dict for c in current):
            path.append(part)  # a key of a mapping such as labels: {name: LabelSpec}
            maps = [c for c in current if typing.get_origin(c) is dict]
            current = _unwrap(typing.get_args(maps[0])[1])
        else:  # a union branch tag such as "list[float]" or a model class name
            tagged = [c for c in current if getattr(c, "__name__", None) == part]
            current = tagged or current
    models = [c for c in current if isinstance(c, type) and issubclass(c, BaseModel)]
    return path, models[0] if models else None


def format_validation_error(err: ValidationError, root: type[BaseModel], source: str) -> str:
    """One line per key path: what is wrong and what is allowed."""
    lines: dict[str, list[str]] = {}
    for item in err.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            path, parent = _resolve(root, loc[:-1])
            key = ".".join([*path, str(loc[-1])])
            allowed = sorted(parent.model_fields) if parent is not None else []
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        else:
            path, _ = _resolve(root, loc)
            key = ".".join(path) or "(top level)"
            msg = item["msg"]
            if "input" in item and item["type"] != "missing" and not isinstance(item["input"], dict):
                msg += f" (got {item['input']!r})"
        lines.setdefault(key, [])
        if msg not in lines[key]:
            lines[key].append(msg)
    body = "\n".join(f"  {key}: {' | or: '.join(msgs)}" for key, msgs in lines.items())
    return f"{source}: invalid config\n{body}"


def validate_config(model: type[M], raw: Mapping[str, Any], source: str = "config") -> M:
    """``model`` (any config class) from a mapping, or a :class:`ConfigError` naming
    ``source`` and each bad key path."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of config sections, got {type(raw).__name__}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None


def read_yaml_config(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; clear errors for a missing file, bad YAML
    or a non-mapping."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = load_yaml(path.read_bytes())  # bytes: PyYAML reads UTF-16 / UTF-8 with a BOM too
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    except RecursionError as err:
        raise ConfigError(f"{path}: nested too deeply to be a config (lists or mappings "
                          "inside each other hundreds of levels down)") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return raw
