"""What the SAE reported at the steered positions: per intervened (or recorded) feature, how
often it fired and how strongly."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class SteeredFeatureStats:
    """What the SAE reported at the steered positions, per intervened feature: ``fired`` counts
    the positions where the feature's activation was > 0 (being among the top k with
    activation 0 is not firing)."""

    positions: int = 0
    fired: dict[int, int] = field(default_factory=dict)
    act_sum: dict[int, float] = field(default_factory=dict)
    act_max: dict[int, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, features: Iterable[int]) -> SteeredFeatureStats:
        features = list(features)
        return cls(0, dict.fromkeys(features, 0), dict.fromkeys(features, 0.0),
                   dict.fromkeys(features, 0.0))

    def add(self, other: SteeredFeatureStats) -> None:
        self.positions += other.positions
        for f in other.fired:
            self.fired[f] = self.fired.get(f, 0) + other.fired[f]
            self.act_sum[f] = self.act_sum.get(f, 0.0) + other.act_sum[f]
            self.act_max[f] = max(self.act_max.get(f, 0.0), other.act_max[f])

    def to_dict(self) -> dict:
        n = self.positions
        return {"steered_positions": n, "features": {
            str(f): {"fired_fraction": (self.fired[f] / n) if n else None,
                     "mean_activation": (self.act_sum[f] / n) if n else None,
                     "max_activation": self.act_max[f] if n else None}
            for f in self.fired}}


