"""Online experiments: deterministic bucketing and the statistical readout.

Bucketing hashes (salt, user id), so a user keeps a variant for the experiment's life and
different experiments (different salts) bucket independently. The readout compares each
variant's click-through rate with the control's: absolute and relative lift, a 95%
confidence interval of the difference (unpooled normal approximation) and a two-sided
p-value (pooled two-proportion z-test); a sample-ratio-mismatch check (chi-square against
the configured shares) flags a broken split before anyone reads the lift.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Variant:
    name: str
    share: float


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    variants: tuple[Variant, ...]

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("an experiment needs at least one variant")
        total = sum(v.share for v in self.variants)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"variant shares must add up to 1, not {total}")
        if any(v.share < 0 for v in self.variants):
            raise ValueError("variant shares cannot be negative")

    @property
    def control(self) -> str:
        return self.variants[0].name


def bucket(user_id: str, salt: str) -> float:
    """A user's position in [0, 1) for one salt: uniform, stable, independent per salt."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, user_id: str) -> str:
    position = bucket(user_id, experiment.salt)
    edge = 0.0
    for variant in experiment.variants:
        edge += variant.share
        if position < edge:
            return variant.name
    return experiment.variants[-1].name


@dataclass(frozen=True)
class VariantReadout:
    variant: str
    exposures: int
    clicks: int
    ctr: float
    lift: float | None = None
    relative_lift: float | None = None
    ci95: tuple[float, float] | None = None
    p_value: float | None = None


def compare(
    control: tuple[int, int], treatment: tuple[int, int], confidence: float = 0.95
) -> tuple[float, float | None, tuple[float, float], float]:
    """(exposures, clicks) of control and treatment -> (diff, relative, (low, high), p)."""
    n1, x1 = control
    n2, x2 = treatment
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both variants need exposures")
    p1, p2 = x1 / n1, x2 / n2
    diff = p2 - p1
    z = stats.norm.ppf(0.5 + confidence / 2)
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = 1.0 if se_pooled == 0 else 2 * stats.norm.sf(abs(diff) / se_pooled)
    relative = diff / p1 if p1 > 0 else None
    return diff, relative, (diff - z * se, diff + z * se), p_value


def readout(experiment: Experiment, counts: dict[str, tuple[int, int]]) -> list[VariantReadout]:
    """counts: variant -> (exposures, clicks). The first variant is the control."""
    control = counts.get(experiment.control, (0, 0))
    rows = []
    for variant in experiment.variants:
        exposures, clicks = counts.get(variant.name, (0, 0))
        ctr = clicks / exposures if exposures else 0.0
        if variant.name == experiment.control or exposures == 0 or control[0] == 0:
            rows.append(VariantReadout(variant.name, exposures, clicks, ctr))
            continue
        diff, relative, interval, p_value = compare(control, (exposures, clicks))
        rows.append(VariantReadout(variant.name, exposures, clicks, ctr, diff, relative, interval, p_value))
    return rows


def sample_ratio_mismatch(
    experiment: Experiment, exposures: dict[str, int], alpha: float = 0.001
) -> tuple[bool, float]:
    """(mismatch, p-value) of the observed exposure split against the configured shares."""
    observed = [exposures.get(v.name, 0) for v in experiment.variants]
    total = sum(observed)
    if total == 0:
        return False, 1.0
    expected = [v.share * total for v in experiment.variants]
    _, p_value = stats.chisquare(observed, expected)
    return bool(p_value < alpha), float(p_value)
