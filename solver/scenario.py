"""What a user asks: the model, traffic classes with SLOs and quality floors, and the hardware one may rent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .catalog import read_toml
from .errors import QuantplanError, validation_problem
from .specs import scalar_types

RECOVERY_KINDS = ("knowledge", "math", "code", "chat")  # the task kinds of quality_data.TASK_KINDS
Objective = Literal["cost", "latency", "balanced"]
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# Generous but finite limits on what a user asks: beyond them a number is a typo, and the integer
# program's coefficients would lose precision (a million clients already needs ~2,000 H100 replicas).
MAX_CONCURRENCY = 1_000_000
MAX_RATE_PER_S = 1_000_000.0
MAX_SLO_MS = 10_000_000.0  # about 2.8 hours
MAX_PRICE = 1_000.0  # $ per device-hour (the shipped catalogs' highest is under $10)
MAX_DEVICES = 1_000_000
MAX_TOKENS = 2_000_000  # per request, prompt or output


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_types(cls, value, info: ValidationInfo):
        return scalar_types(cls, value, info)


class TrafficClass(Input):
    """One kind of traffic: lengths, load and the SLOs and quality floor it must meet."""

    name: str = "default"
    prompt_tokens: int = Field(default=512, gt=0, le=MAX_TOKENS)
    output_tokens: int = Field(default=256, gt=0, le=MAX_TOKENS)
    concurrency: int | None = Field(default=None, gt=0, le=MAX_CONCURRENCY)
    rate_per_s: float | None = Field(default=None, gt=0, le=MAX_RATE_PER_S)
    ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    min_tokens_per_s: float | None = Field(default=None, gt=0, le=1_000_000)
    max_ppl_delta: float | None = Field(default=None, ge=0, le=1_000_000)
    use_case: str | None = None
    min_recovery_pct: float | dict[str, float] | None = None  # accuracy-recovery floor, all or per task kind
    slo_statistic: Literal["mean", "p50", "p90", "p99"] | None = None
    requests_per_client: float = Field(default=10.0, ge=0, le=1e6)

    @model_validator(mode="after")
    def _consistent(self) -> TrafficClass:
        if self.concurrency is not None and self.rate_per_s is not None:
            raise ValueError("give concurrency or rate_per_s, not both")
        if self.tpot_ms is not None and self.min_tokens_per_s is not None:
            raise ValueError("give tpot_ms or min_tokens_per_s, not both")
        if self.max_ppl_delta is not None and self.use_case is not None:
            raise ValueError("give max_ppl_delta or use_case, not both")
        floors = self.min_recovery_pct
        for kind, floor in (floors.items() if isinstance(floors, dict) else [("all", floors)]):
            if kind not in RECOVERY_KINDS + ("all",) or (floor is not None and not 0 < floor <= 100):
                raise ValueError(f"min_recovery_pct {kind}={floor}: give a percentage in (0, 100] for all "
                                 f"task kinds or per kind ({', '.join(RECOVERY_KINDS)})")
        return self

    @property
    def load_kind(self) -> str:
        return "rate" if self.rate_per_s is not None else "concurrency"

    @property
    def statistic(self) -> str:
        """The statistic the TTFT/TPOT SLOs bound: given, else p90 for a rate class, mean for concurrency."""
        if self.slo_statistic is not None:
            return self.slo_statistic
        return "p90" if self.load_kind == "rate" else "mean"

    @property
    def users(self) -> int:
        return self.concurrency if self.concurrency is not None else 1

    @property
    def tpot_limit_ms(self) -> float | None:
        if self.tpot_ms is not None:
            return self.tpot_ms
        if self.min_tokens_per_s is not None:
            return 1000.0 / self.min_tokens_per_s
        return None

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


class FleetModel(Input):
    """One model of a fleet: its own traffic classes and (optional) quality floor by use case."""

    id: str | None = None
    model_config_path: str | None = None
    classes: tuple[TrafficClass, ...] = Field(min_length=1)
    use_case: str | None = None  # the floor of every class that sets none itself

    @model_validator(mode="after")
    def _one_model(self) -> FleetModel:
        if (self.id is None) == (self.model_config_path is None):
            raise ValueError("each [[model]] needs an id or a model_config, exactly one of them")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("traffic class names must be unique within a model")
        return self

    @property
    def label(self) -> str:
        return self.id or Path(self.model_config_path).parent.name or "model"

    def floored(self) -> tuple[TrafficClass, ...]:
        """Its classes, each with the model's use case where the class sets no floor of its own."""
        if self.use_case is None:
            return self.classes
        return tuple(c if c.use_case is not None or c.max_ppl_delta is not None
                     else c.model_copy(update={"use_case": self.use_case}) for c in self.classes)


class Scenario(Input):
    """A whole planning problem, as a scenario TOML file or CLI options describe it."""

    model: str | None = None
    model_config_path: str | None = None
    classes: tuple[TrafficClass, ...] = Field(default=(TrafficClass(),), min_length=1)
    gpus: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    frameworks: tuple[str, ...] = ()
    kv_cache_dtypes: tuple[str, ...] = ()
    max_gpus: int = Field(default=8, ge=1, le=64)
    gpu_count: dict[str, Annotated[int, Field(ge=0, le=MAX_DEVICES)]] = Field(default_factory=dict)
    prices: dict[str, Annotated[float, Field(le=MAX_PRICE)]] = Field(default_factory=dict)
    provider: str | None = None  # plan with this provider's prices (catalogs/prices.toml); None: the median
    objective: Objective = "cost"
    max_configurations: int | None = Field(default=None, ge=1, le=10_000)
    batch_sizes: tuple[Annotated[int, Field(le=100_000)], ...] = DEFAULT_BATCH_SIZES
    catalogs: tuple[str, ...] = ()
    time_limit_s: float = Field(default=60.0, gt=0, le=1_000_000)
    solver: Literal["highs", "cbc"] = "highs"
    alternatives: bool = True
    # auto: a configuration outside the validation data's coverage is planned at its p90 error, others as predicted
    margin: Literal["auto", "none", "median", "p90"] = "auto"
    write_lp: str | None = None
    max_cost_per_hour: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    gpu_class: Literal["datacenter", "consumer", "all"] = "all"
    models: tuple[FleetModel, ...] = ()  # a fleet: several models sharing one device pool
    owned: dict[str, int] = Field(default_factory=dict)  # devices one owns: that many, at no hourly price
    # the API server in front of the engines when not their own (solver/servers.py), e.g. "nim"
    api_server: str | None = None

    @property
    def fleet(self) -> bool:
        return bool(self.models)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.models:
            if self.model is not None or self.model_config_path is not None:
                raise ValueError("a fleet lists its models as [[model]] tables; give no top-level model")
            labels = [m.label for m in self.models]
            if len(set(labels)) != len(labels):
                raise ValueError(f"each model appears once in a fleet: {', '.join(sorted(labels))}")
        elif (self.model is None) == (self.model_config_path is None):
            raise ValueError("give a model (--model or model = ...) or a config.json (--model-config), "
                             "exactly one of them")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("traffic class names must be unique")
        for label, table in (("gpu_count", self.gpu_count), ("owned", self.owned)):
            for device, count in table.items():
                if count < 0:
                    raise ValueError(f"{label} {device}={count}: must be 0 or more")
        if set(self.owned) & set(self.gpu_count):
            raise ValueError("a device is either owned (owned = {DEV = N}) or rented (gpu_count), not both")
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError("batch sizes must be positive")
        return self


def load_scenario(path: str | Path, require_class: bool = True, **overrides) -> Scenario:
    """Read a scenario TOML file; relative catalog and config paths are relative to the file.

    `require_class`: a file without a [[class]] is an error (False when the command line gives the workload).
    """
    path = Path(path)
    label = f"scenario {path}"
    document = dict(read_toml(path, label))
    base = path.parent
    if isinstance(document.get("model"), list):  # [[model]] tables: a fleet
        document["models"] = [_fleet_model(entry, base) for entry in document.pop("model")]
    if "budget_per_hour" in document:
        document["max_cost_per_hour"] = document.pop("budget_per_hour")
    if "class" in document:
        classes = document.pop("class")
        if not isinstance(classes, list) or not all(isinstance(c, dict) for c in classes):
            raise QuantplanError(f"{label}: 'class' must be an array of tables ([[class]])")
        document["classes"] = classes
    elif "workload" in document:
        workload = document.pop("workload")
        if not isinstance(workload, dict):
            raise QuantplanError(f"{label}: 'workload' must be a table ([workload])")
        document["classes"] = [workload]
    elif require_class and "models" not in document:  # a fleet's classes live in its [[model]] tables
        raise QuantplanError(f"{label}: no [[class]]: give at least one traffic class (prompt_tokens, "
                             f"output_tokens, concurrency or rate_per_s, SLOs) or the workload options")
    if "model_config" in document:
        document["model_config_path"] = document.pop("model_config")
    config = document.get("model_config_path")
    if config is not None and not isinstance(config, str):
        raise QuantplanError(f"{label}: model_config must be a path to a config.json (a string), not {config!r}")
    if config:
        document["model_config_path"] = str((base / config).resolve())
    catalogs = document.get("catalogs", [])
    if not isinstance(catalogs, list) or not all(isinstance(c, str) for c in catalogs):
        raise QuantplanError(f"{label}: catalogs must be a list of paths (strings), not {catalogs!r}")
    document["catalogs"] = [str((base / c).resolve()) for c in catalogs]
    document.update({k: v for k, v in overrides.items() if v is not None})
    return make_scenario(document, label)


# Scenario fields as the command line spells them (the rest: --name-with-dashes).
CLI_NAMES = {"model_config_path": "--model-config", "gpus": "--gpu", "methods": "--method",
             "frameworks": "--framework", "kv_cache_dtypes": "--kv-cache-dtype", "prices": "--price",
             "catalogs": "--catalog", "rate_per_s": "--rate", "time_limit_s": "--time-limit"}
FILE_NAMES = {"model_config_path": "model_config"}


def _fleet_model(entry, base: Path) -> dict:
    if not isinstance(entry, dict):
        raise QuantplanError(f"scenario: each [[model]] must be a table, not {entry!r}")
    entry = dict(entry)
    if "class" in entry:
        entry["classes"] = entry.pop("class")
    if "model_config" in entry:
        entry["model_config_path"] = str((base / str(entry.pop("model_config"))).resolve())
    return entry


def make_scenario(fields: dict, label: str = "options") -> Scenario:
    """Validate fields into a Scenario; the error names the field in one line, as the user wrote it:
    `--concurrency` for command-line options, `[[class]] #1 (chat) concurrency` in a scenario file."""
    try:
        return Scenario(**fields)
    except ValidationError as error:
        location, message = validation_problem(error, set(Scenario.model_fields) | set(TrafficClass.model_fields))
        command_line = label == "options"
        where = _field_name(location, fields, command_line)
        given = _given(fields, location)
        if given is not None and where and not message.startswith("unknown field"):
            shown = _toml(given) if not command_line else str(given).lower() if isinstance(given, bool) else given
            where += f"{shown}" if where.endswith("=") else f" {shown}" if command_line else f" = {shown}"
        if command_line:
            raise QuantplanError(f"{where}: {message}" if where else message) from None
        raise QuantplanError(f"{label}: {where + ': ' if where else ''}{message}") from None
    except TypeError as error:
        raise QuantplanError(f"{label}: {error}") from None


def _field_name(location: tuple, fields: dict, command_line: bool) -> str:
    """('classes', 0, 'rate_per_s') -> '--rate' or '[[class]] #1 (chat) rate_per_s'."""
    if not location:
        return ""
    head, *rest = location
    if head == "classes" and rest and isinstance(rest[0], int):
        name = str(rest[1]) if len(rest) > 1 else ""
        if command_line:
            return CLI_NAMES.get(name, "--" + name.replace("_", "-")) if name else "workload"
        entry = (fields.get("classes") or [{}])[rest[0]] if rest[0] < len(fields.get("classes") or []) else {}
        title = f" ({entry['name']})" if isinstance(entry, dict) and "name" in entry else ""
        return f"[[class]] #{rest[0] + 1}{title}" + (f" {name}" if name else "")
    key = str(head)
    if command_line:
        spelled = CLI_NAMES.get(key, "--" + key.replace("_", "-"))
        return f"{spelled} {rest[0]}=" if rest and isinstance(rest[0], str) else spelled
    spelled = FILE_NAMES.get(key, key)
    return spelled + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)


def _toml(value) -> str:
    """A scalar as a TOML file spells it."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def _given(fields: dict, location: tuple):
    """The value the user gave at `location`, or None when it cannot be found."""
    value = fields
    for part in location:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
    if isinstance(value, dict):
        return None
    return value if isinstance(value, (int, float, str)) else None
