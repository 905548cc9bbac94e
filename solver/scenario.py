"""What a user asks: the model, traffic classes with SLOs and quality floors, and the hardware one may rent."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .catalog import read_toml
from .errors import QuantplanError

RECOVERY_KINDS = ("knowledge", "math", "code", "chat")  # the task kinds of quality_data.TASK_KINDS
Objective = Literal["cost", "latency", "balanced"]
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrafficClass(Input):
    """One kind of traffic: lengths, load and the SLOs and quality floor it must meet."""

    name: str = "default"
    prompt_tokens: int = Field(default=512, gt=0, le=2_000_000)
    output_tokens: int = Field(default=256, gt=0, le=2_000_000)
    concurrency: int | None = Field(default=None, gt=0)
    rate_per_s: float | None = Field(default=None, gt=0)
    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    min_tokens_per_s: float | None = Field(default=None, gt=0)
    max_ppl_delta: float | None = Field(default=None, ge=0)
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
    gpu_count: dict[str, int] = Field(default_factory=dict)
    prices: dict[str, float] = Field(default_factory=dict)
    objective: Objective = "cost"
    max_configurations: int | None = Field(default=None, ge=1)
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    catalogs: tuple[str, ...] = ()
    time_limit_s: float = Field(default=60.0, gt=0)
    solver: Literal["highs", "cbc"] = "highs"
    alternatives: bool = True
    margin: Literal["none", "median", "p90"] = "none"
    write_lp: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if (self.model is None) == (self.model_config_path is None):
            raise ValueError("give a model (--model or model = ...) or a config.json (--model-config), "
                             "exactly one of them")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("traffic class names must be unique")
        for device, count in self.gpu_count.items():
            if count < 0:
                raise ValueError(f"gpu_count {device}={count}: must be 0 or more")
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError("batch sizes must be positive")
        return self


def load_scenario(path: str | Path, **overrides) -> Scenario:
    """Read a scenario TOML file; relative catalog and config paths are relative to the file."""
    path = Path(path)
    document = read_toml(path, f"scenario {path}")
    document = dict(document)
    if "class" in document:
        document["classes"] = document.pop("class")
    elif "workload" in document:
        document["classes"] = [document.pop("workload")]
    if "model_config" in document:
        document["model_config_path"] = document.pop("model_config")
    base = path.parent
    if document.get("model_config_path"):
        document["model_config_path"] = str((base / document["model_config_path"]).resolve())
    document["catalogs"] = [str((base / c).resolve()) for c in document.get("catalogs", [])]
    document.update({k: v for k, v in overrides.items() if v is not None})
    return make_scenario(document, f"scenario {path}")


def make_scenario(fields: dict, label: str = "options") -> Scenario:
    """Validate fields into a Scenario; the error names the field in one line."""
    try:
        return Scenario(**fields)
    except ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise QuantplanError(f"{label}: {loc + ': ' if loc else ''}{message}") from None
    except TypeError as error:
        raise QuantplanError(f"{label}: {error}") from None
