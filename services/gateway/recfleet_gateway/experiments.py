"""Online experiments in the recommendation path: which experiment a request takes part
in, which variant a user gets, what that variant asks of ranking, and the readout body.

Pure logic over `recfleet_models.experiments` (bucketing and statistics), shared by the
request path (assignment: serving/experiment_book.py) and the control plane (validation
and readout: control/api/experiments.py); the Postgres side is in adapters/experiments.py
and adapters/exposures.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from recfleet_models.experiments import Experiment, Variant, assign, readout, sample_ratio_mismatch

RULES = "rules"
SERVING = "serving"
NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
SURFACE_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
RANKER_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
MAX_VARIANTS = 10


class InvalidExperiment(ValueError):
    """A definition is malformed; `errors` lists `{field, message}` pairs."""

    def __init__(self, errors: list[dict[str, str]]):
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class VariantSpec:
    name: str
    share: float
    # "rules", "serving", or a ranker version.
    ranker_version: str = SERVING

    def as_dict(self) -> dict:
        return {"name": self.name, "share": self.share, "ranker_version": self.ranker_version}


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment as stored; the first variant is the control."""

    name: str
    salt: str
    variants: tuple[VariantSpec, ...]
    surface: str | None = None

    @property
    def model(self) -> Experiment:
        return Experiment(self.name, self.salt, tuple(Variant(v.name, v.share) for v in self.variants))

    def variant(self, name: str) -> VariantSpec:
        return next(v for v in self.variants if v.name == name)


@dataclass(frozen=True)
class Assignment:
    """A request's place in an experiment."""

    experiment: str
    variant: str
    ranker_version: str

    def as_response(self) -> dict:
        return {"name": self.experiment, "variant": self.variant}


def validate(name: str, variants: list[dict], salt: str | None = None, surface: str | None = None) -> ExperimentSpec:
    """The spec for a definition; InvalidExperiment naming every bad field."""
    errors: list[dict[str, str]] = []
    if not NAME_RE.match(name or ""):
        errors.append({"field": "body.name", "message": "must be 1-64 characters of [A-Za-z0-9_.:-]"})
    if salt is not None and not 1 <= len(salt) <= 128:
        errors.append({"field": "body.salt", "message": "must be 1-128 characters"})
    if surface is not None and not SURFACE_RE.match(surface):
        errors.append({"field": "body.surface", "message": "must be 1-64 characters of [A-Za-z0-9_.:-]"})
    if not 2 <= len(variants) <= MAX_VARIANTS:
        errors.append({"field": "body.variants", "message": f"must hold 2-{MAX_VARIANTS} variants"})
    specs = []
    seen: set[str] = set()
    for index, raw in enumerate(variants):
        where = f"body.variants[{index}]"
        variant_name = str(raw.get("name", ""))
        share = raw.get("share")
        ranker = str(raw.get("ranker_version") or SERVING)
        if not NAME_RE.match(variant_name):
            errors.append({"field": f"{where}.name", "message": "must be 1-64 characters of [A-Za-z0-9_.:-]"})
        elif variant_name in seen:
            errors.append({"field": f"{where}.name", "message": f"variant {variant_name!r} appears twice"})
        seen.add(variant_name)
        if not isinstance(share, int | float) or isinstance(share, bool) or not 0 < share <= 1:
            errors.append({"field": f"{where}.share", "message": "must be a number in (0, 1]"})
            share = 0.0
        if not RANKER_RE.match(ranker):
            errors.append(
                {"field": f"{where}.ranker_version", "message": "must be 'rules', 'serving' or a ranker version"}
            )
        specs.append(VariantSpec(variant_name, float(share), ranker))
    total = sum(v.share for v in specs)
    if specs and not any(e["field"].endswith(".share") for e in errors) and not math.isclose(total, 1.0, abs_tol=1e-6):
        errors.append({"field": "body.variants", "message": f"shares must add up to 1, not {total:g}"})
    if errors:
        raise InvalidExperiment(errors)
    return ExperimentSpec(name, salt or name, tuple(specs), surface)


def overlaps(surface: str | None, other: str | None) -> bool:
    """Whether two experiments could both claim a request: an experiment without a
    surface takes every request, so it overlaps any other."""
    return surface is None or other is None or surface == other


def choose(running: list[ExperimentSpec], surface: str) -> ExperimentSpec | None:
    """The running experiment for a request on `surface` (at most one can apply: creation
    refuses overlapping experiments)."""
    for spec in running:
        if spec.surface is None or spec.surface == surface:
            return spec
    return None


def assignment(spec: ExperimentSpec, user_id: str) -> Assignment:
    variant = spec.variant(assign(spec.model, user_id))
    return Assignment(spec.name, variant.name, variant.ranker_version)


def ranking_choice(ranker_version: str) -> dict:
    """The RankRequest fields for a variant's ranker."""
    if ranker_version == RULES:
        return {"force_rules": True}
    if ranker_version == SERVING:
        return {}
    return {"ranker_version": ranker_version}


def _number(value) -> float | None:
    """scipy answers numpy scalars; JSON wants plain floats."""
    return None if value is None else float(value)


def readout_body(spec: ExperimentSpec, counts: dict[str, tuple[int, int]]) -> dict:
    """counts: variant -> (exposures, clicks) -> the readout JSON."""
    rows = readout(spec.model, counts)
    mismatch, p_value = sample_ratio_mismatch(spec.model, {name: n for name, (n, _) in counts.items()})
    variants = []
    for row in rows:
        variant = spec.variant(row.variant)
        variants.append(
            {
                "variant": row.variant,
                "share": variant.share,
                "ranker_version": variant.ranker_version,
                "exposures": row.exposures,
                "clicks": row.clicks,
                "ctr": float(row.ctr),
                "lift": _number(row.lift),
                "relative_lift": _number(row.relative_lift),
                "ci95": [float(bound) for bound in row.ci95] if row.ci95 is not None else None,
                "p_value": _number(row.p_value),
            }
        )
    return {
        "experiment": spec.name,
        "control": spec.model.control,
        "variants": variants,
        "srm": {"mismatch": bool(mismatch), "p_value": float(p_value)},
    }
