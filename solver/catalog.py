"""Read TOML catalogs into specs, and look ids and aliases up with helpful errors."""

from __future__ import annotations

import difflib
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Generic, Iterable, TypeVar

from pydantic import BaseModel, ValidationError

from . import specs
from .errors import QuantplanError, validation_problem

SCHEMA_VERSION = 1

# Table name in a catalog file -> the record it holds.
TABLES: dict[str, type[BaseModel]] = {
    "gpu": specs.GPUSpec,
    "price": specs.PriceSpec,
    "model": specs.ModelSpec,
    "method": specs.MethodSpec,
    "kernel": specs.KernelSpec,
    "kv_cache": specs.KVCacheSpec,
    "framework": specs.FrameworkSpec,
    "method_quality": specs.MethodQualitySpec,
    "family_quality": specs.FamilyQualitySpec,
    "kv_quality": specs.KVQualitySpec,
    "use_case": specs.UseCaseSpec,
    "calibration": specs.CalibrationSpec,
}

USER_TABLES = ("gpu", "price", "model", "calibration")


def read_toml(path: Path | str, label: str | None = None) -> dict:
    """Parse a TOML file, turning syntax errors into one-line domain errors."""
    path = Path(path)
    label = label or str(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise QuantplanError(f"{label}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise QuantplanError(f"{label}: malformed TOML: {error}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise QuantplanError(f"{label}: cannot read: {error}") from None


def parse_tables(document: dict, label: str, allowed: Iterable[str] = TABLES) -> dict[str, list[BaseModel]]:
    """Validate each `[[table]]` row into its record; the error names file, table, row and field."""
    allowed = tuple(allowed)
    version = document.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise QuantplanError(f"{label}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    result: dict[str, list[BaseModel]] = {}
    for key, rows in document.items():
        if key == "schema_version":
            continue
        if key not in allowed:
            raise QuantplanError(f"{label}: unknown table [[{key}]] (allowed: {', '.join(allowed)})")
        if not isinstance(rows, list):
            raise QuantplanError(f"{label}: '{key}' must be an array of tables ([[{key}]])")
        record = TABLES[key]
        parsed = []
        for index, row in enumerate(rows):
            where = f"{label}: [[{key}]] #{index + 1}"
            if isinstance(row, dict) and ("id" in row or "gpu" in row):
                where += f" ({row.get('id', row.get('gpu'))})"
            try:
                parsed.append(record(**row))
            except ValidationError as error:
                location, message = validation_problem(error, record.model_fields)
                if message.startswith("unknown field"):
                    raise QuantplanError(f"{where}: {message}") from None
                field = ".".join(str(p) for p in location) or key
                raise QuantplanError(f"{where}: field '{field}': {message}") from None
            except TypeError as error:
                raise QuantplanError(f"{where}: {error}") from None
        result[key] = parsed
    return result


@lru_cache(maxsize=None)
def builtin_catalog(name: str) -> dict[str, list[BaseModel]]:
    """Load one of the packaged catalogs (`gpus`, `methods`, ...) by file stem."""
    resource = resources.files("quantplan.catalogs").joinpath(f"{name}.toml")
    with resource.open("rb") as handle:
        try:
            document = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise QuantplanError(f"built-in catalog {name}.toml: malformed TOML: {error}") from None
    return parse_tables(document, f"built-in catalog {name}.toml")


def user_catalog(path: Path | str) -> dict[str, list[BaseModel]]:
    """Load a user's `--catalog FILE`: GPUs, prices, models and calibrations, no code."""
    return parse_tables(read_toml(path, f"--catalog {path}"), f"--catalog {path}", USER_TABLES)


def normalise(name: str) -> str:
    return " ".join(name.strip().lower().split())


T = TypeVar("T", bound=specs.Identified)


class Registry(Generic[T]):
    """Records of one kind, found by id or case-insensitive alias."""

    def __init__(self, kind: str, records: Iterable[T]) -> None:
        self.kind = kind
        self.by_id: dict[str, T] = {}
        self._names: dict[str, str] = {}
        for record in sorted(records, key=lambda r: r.id):
            self.by_id[record.id] = record
        for record in self.by_id.values():
            for name in (record.id, *record.aliases):
                key = normalise(name)
                owner = self._names.setdefault(key, record.id)
                if owner != record.id and key != normalise(owner):
                    raise QuantplanError(f"{kind} alias {name!r} is claimed by both {owner!r} and {record.id!r}")
            self._names[normalise(record.id)] = record.id

    def __contains__(self, name: str) -> bool:
        return normalise(name) in self._names

    def __iter__(self):
        return iter(self.by_id.values())

    def __len__(self) -> int:
        return len(self.by_id)

    def ids(self) -> list[str]:
        return list(self.by_id)

    def get(self, name: str) -> T:
        key = normalise(name)
        if key in self._names:
            return self.by_id[self._names[key]]
        close = difflib.get_close_matches(key, list(self._names), n=5, cutoff=0.5)
        suggestions = sorted({self._names[c] for c in close})
        hint = f"; closest: {', '.join(suggestions)}" if suggestions else f"; known: {known_ids(self.ids())}"
        raise QuantplanError(f"unknown {self.kind} {name!r}{hint}")


KNOWN_SHOWN = 12


def known_ids(ids: list[str], shown: int = KNOWN_SHOWN) -> str:
    """The first `shown` ids, then how many more there are (a list that stops silently looks complete)."""
    head = ", ".join(ids[:shown])
    rest = len(ids) - shown
    return head + (f" and {rest} more" if rest > 0 else "")
