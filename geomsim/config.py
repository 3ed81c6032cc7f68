"""One configuration layer for every geomsim command.

A command's settings are a frozen dataclass whose fields are declared with
`option(default, help=..., check=...)`: the field's type annotation says how a
value is parsed (from a TOML value or a command-line string), its `help` is the
flag's help text (with units), and its `check` the allowed range.  From that
one declaration the layer builds:

* `build(cls, file, overrides)`: TOML file + overrides (flags win) -> a
  validated instance; tables named in `skip_tables` (e.g. `[repro]`, which
  belongs to `paper_repro`) are ignored;
* `add_flags(parser, cls)`: one `--flag` per field for argparse;
* `digest(config, fields)`: a stable hash of settings (e.g. that every process of a
  group runs the same config);
* `stage_key(config, fields, *parents)`: the cache key of a stage of a pipeline: its
  own settings, its parents' keys and the code's version (`code_version`), so saved
  work is reused only when nothing that made it changed;
* `option_like(cls, name, default)`: a field of another config with another default.

Every bad value raises `ConfigError` with one line naming the field and the
allowed range; the CLIs print it instead of a traceback.  A dataclass may add
cross-field checks in a `check(self)` method that raises `ConfigError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

Check = Callable[[str, Any], "str | None"]


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


def option(default: Any = dataclasses.MISSING, *, help: str, check: Check | None = None,
           parse: Callable[[str, Any], Any] | None = None, flag: bool = True, shown: str | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text, range check and (optional) custom parser.

    `parse(name, raw) -> value` replaces the type-driven parser (e.g. a grid axis
    given as `lo:hi:n`); `flag=False` keeps a field out of the command line (a
    TOML-only table); `shown` is how `--help` shows the default (e.g. a long tuple).
    """
    metadata = {"help": help, "check": check, "parse": parse, "flag": flag, "shown": shown}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_like(cls, name: str, default: Any, *, help: str | None = None, check: Check | None = None) -> Any:
    """`cls`'s field `name` (its help, check and parser) with another default (and, where
    given, another help or a narrower check): for a config that extends `cls` and needs,
    e.g., more seeds by default, without a second declaration of the rest."""
    metadata = dict(cls.__dataclass_fields__[name].metadata)
    if help is not None:
        metadata["help"] = help
    if check is not None:
        metadata["check"] = check
    return dataclasses.field(default=default, metadata=metadata)


# --- checks ------------------------------------------------------------------------------------


def at_least(lo: float | int) -> Check:
    def check(name, value):
        return None if value >= lo else f"{name}: must be >= {lo:g} (got {value!r})"

    return check


def positive(name: str, value: Any) -> str | None:
    return None if value > 0 else f"{name}: must be > 0 (got {value!r})"


def in_range(lo: float | int, hi: float | int, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    left, right = "(" if open_lo else "[", ")" if open_hi else "]"

    def check(name, value):
        ok = (value > lo if open_lo else value >= lo) and (value < hi if open_hi else value <= hi)
        return None if ok else f"{name}: must be in {left}{lo:g}, {hi:g}{right} (got {value!r})"

    return check


def one_of(*allowed: Any) -> Check:
    def check(name, value):
        return None if value in allowed else f"{name}: must be one of {', '.join(map(str, allowed))} (got {value!r})"

    return check


def each(inner: Check, *, nonempty: bool = True) -> Check:
    """Apply `inner` to every element of a tuple field."""

    def check(name, values):
        if nonempty and not values:
            return f"{name}: needs at least one value"
        for v in values:
            message = inner(name, v)
            if message:
                return message.replace("(got", "(every value; got", 1)
        return None

    return check


# --- parsing -----------------------------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got a boolean")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


_SCALARS: dict[Any, Callable[[str, Any], Any]] = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}


def _parse(name: str, annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation](name, value)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(annotation)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return tuple(_SCALARS[inner](name, v.strip() if isinstance(v, str) else v) for v in items)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a TOML table")
        return dict(value)
    raise TypeError(f"config field {name}: unsupported annotation {annotation!r}")


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def coerce(cls, raw: dict[str, Any]) -> dict[str, Any]:
    """Raw key/values (TOML types or flag strings; dashes or underscores) -> field values."""
    fields = _fields(cls)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{key}: unknown key; allowed keys are {', '.join(sorted(fields))}")
        field, annotation = fields[name]
        parse = field.metadata.get("parse")
        out[name] = parse(name, value) if parse else _parse(name, annotation, value)
    return out


def validate(config: Any) -> Any:
    """Run every field's check, then the dataclass's own `check()`; returns `config`."""
    for name, (field, _) in _fields(type(config)).items():
        check = field.metadata.get("check")
        if check is not None:
            message = check(name, getattr(config, name))
            if message:
                raise ConfigError(message)
    extra = getattr(config, "check", None)
    if callable(extra):
        extra()
    return config


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file (one-line error if missing, unreadable or malformed)."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"config: cannot read {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {path} is not valid TOML ({err})") from None


def build(cls, file: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
          skip_tables: tuple[str, ...] = ("repro",)) -> Any:
    """A validated `cls` from an optional TOML file plus overrides (overrides win)."""
    raw: dict[str, Any] = {}
    if file is not None:
        data = load_toml(file)
        for table in skip_tables:
            data.pop(table, None)
        raw.update(coerce(cls, data))
    raw.update(coerce(cls, overrides or {}))
    return validate(cls(**raw))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def digest(config: Any, fields: tuple[str, ...] | None = None) -> str:
    """16-hex-digit hash of the named fields (all when None)."""
    data = to_dict(config)
    if fields is not None:
        data = {f: data[f] for f in fields}
    return _hash(data)


@functools.cache
def code_version() -> str:
    """Hash of geomsim's own source files (their paths and bytes).

    Part of every stage key: saved work made by other code is recomputed instead of
    reused.  A finer map (a stage -> the modules it runs) would keep more work across
    edits, but is one more hand-kept list that goes stale silently, which is the
    failure this guards against (e.g. a changed task in `geomsim.tasks.language`
    reusing a model trained on the old one).  ~150 files: a few milliseconds, once.
    """
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stage_key(config: Any, fields: tuple[str, ...], *parents: str) -> str:
    """The cache key of a pipeline stage: the stage's own settings (`fields` of `config`),
    the keys of the stages it starts from, and `code_version()`.  A change to any of them,
    or to any ancestor's settings through its key, makes the key (and the saved work) new."""
    return _hash({"settings": digest(config, fields), "parents": list(parents), "code": code_version()})


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One `--flag` per field (help from the field, default shown); absent flags stay absent."""
    defaults = cls()
    for name, (field, annotation) in _fields(cls).items():
        if not field.metadata.get("flag", True):
            continue
        flag = "--" + name.replace("_", "-")
        shown = field.metadata.get("shown") or _shown(getattr(defaults, name))
        text = f"{field.metadata['help']} (default: {shown})"
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, metavar=name.upper(), default=argparse.SUPPRESS, help=text)
