"""What is recorded and when: the telemetry settings (conf/telemetry/*.yaml as one object)
and the schedule of logged steps."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from initlab.defaults import preset
from initlab.telemetry.hist import HistSpec

_SHIPPED = preset("telemetry", "default")


class Schedule:
    """Which steps are logged: every step below `first`, every `every`-th, `log_points`
    log-spaced steps over the run (when its length is known), and always the last."""

    def __init__(self, total: int | None, first: int, every: int, log_points: int = 0) -> None:
        self.total, self.first, self.every = total, first, every
        last = max(total - 1, 0) if total is not None else None
        self.log_steps = set(np.unique(np.geomspace(1, max(last, 1), log_points).round().astype(int)).tolist()) \
            if log_points > 0 and last is not None else set()
        self.last = last

    def __call__(self, step: int) -> bool:
        return step < self.first or step % self.every == 0 or step in self.log_steps or step == self.last

    def count(self) -> int | None:
        """How many of the run's steps are logged; None when its length is not known."""
        if self.total is None:
            return None
        total, first, every = self.total, min(self.first, self.total), self.every
        regular = first + max(-(-total // every) - -(-first // every), 0)  # below first, then multiples of every
        extra = {s for s in self.log_steps | {self.last} if s < total and s >= first and s % every}
        return regular + len(extra)


@dataclass
class TelemetryConfig:
    """Every telemetry setting; the defaults are conf/telemetry/default.yaml's."""

    params: bool = bool(_SHIPPED["params"])
    bn: bool = bool(_SHIPPED["bn"])
    norm: bool = bool(_SHIPPED["norm"])
    hist: HistSpec | None = field(default_factory=HistSpec)
    thresholds: Mapping[str, float] | None = None  # dead/saturated thresholds (conf: `dead`)
    modules: Sequence[str] = ()
    formats: Sequence[str] = ()  # fp16, bf16, e4m3, e5m2: what each would flush, lose to subnormals, overflow
    ranks: str = "merged"  # under DDP: merged (the global batch's rows) | each (every rank's own rows too)
    enabled: bool = True
    first: int = int(_SHIPPED["first"])
    every: int = int(_SHIPPED["every"])
    log_points: int = int(_SHIPPED["log_points"])
    flush_every: int = int(_SHIPPED["flush_every"])
    flush_seconds: float = float(_SHIPPED["flush_seconds"])
    name: str = "default"

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "TelemetryConfig":
        """From a dict of conf/telemetry's keys; missing keys take the `default` preset's."""
        c = preset("telemetry", "default", cfg)
        h = c["hist"]  # None (as `as_dict()` writes a config without histograms) or enabled=false: none
        hist = HistSpec(float(h["min_abs"]), float(h["max_abs"]), int(h["bins_per_decade"]),
                        int(h["sample"])) if h is not None and h.get("enabled", True) else None
        return cls(params=bool(c["params"]), bn=bool(c["bn"]), norm=bool(c["norm"]), hist=hist, thresholds=dict(c["dead"] or {}),
                   modules=list(c["modules"] or []), formats=list(c.get("formats") or []),
                   ranks=str(c.get("ranks") or "merged"), enabled=bool(c["enabled"]), first=int(c["first"]),
                   every=int(c["every"]), log_points=int(c["log_points"]), flush_every=int(c["flush_every"]),
                   flush_seconds=float(c["flush_seconds"]), name=str(c["name"]))

    @classmethod
    def of(cls, spec: "str | Mapping[str, Any] | TelemetryConfig | None") -> "TelemetryConfig":
        """A preset name (`default`, `full`, `off`), a dict of conf/telemetry's keys, or a config."""
        if spec is None:
            spec = "default"
        if isinstance(spec, TelemetryConfig):
            return spec
        if isinstance(spec, str):
            return cls.from_cfg(preset("telemetry", spec))
        if isinstance(spec, Mapping):
            return cls.from_cfg({"name": "custom", **spec})
        try:  # an OmegaConf DictConfig (Hydra's)
            from omegaconf import OmegaConf

            if OmegaConf.is_config(spec):
                return cls.from_cfg(OmegaConf.to_container(spec, resolve=True))
        except ImportError:
            pass
        raise TypeError(f"telemetry= takes a preset name, a dict or a TelemetryConfig, not {type(spec).__name__}")

    def schedule(self, total_steps: int | None) -> Schedule:
        return Schedule(total_steps, self.first, self.every, self.log_points)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "enabled": self.enabled, "first": self.first, "every": self.every,
                "log_points": self.log_points, "flush_every": self.flush_every,
                "flush_seconds": self.flush_seconds, "params": self.params,
                "bn": self.bn, "norm": self.norm, "modules": list(self.modules), "formats": list(self.formats), "ranks": self.ranks, "dead": dict(self.thresholds or {}),
                "hist": self.hist.as_dict() if self.hist else None}
