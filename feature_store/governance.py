"""Governance checks on feature use: sensitive attributes are for evaluation, not for model inputs."""

from __future__ import annotations

from collections.abc import Iterable

from feature_store.definitions import FEATURES, FeatureSpec, task
from feature_store.errors import GovernanceError


def _feature_name(ref: str) -> str:
    """Accept `name`, `view:name` (Feast feature reference) and `view__name` (full feature names)."""
    if ":" in ref:
        return ref.split(":", 1)[1]
    if "__" in ref:
        return ref.split("__", 1)[1]
    return ref


def describe(name: str) -> FeatureSpec:
    spec = FEATURES.get(_feature_name(name))
    if spec is None:
        raise GovernanceError(f"unknown feature {name!r} (see `careloop features list`)")
    return spec


def check_model_inputs(task_name: str, features: Iterable[str]) -> list[FeatureSpec]:
    """Return the specs of `features` if `task_name` may use them all as model inputs, else raise one clear error.

    Evaluation-only features (race, ethnicity, insurance-like, scanner identity) are refused unless the task
    lists them in `allow_sensitive`; prohibited features (identifiers) are always refused.
    """
    t = task(task_name)
    specs = [describe(f) for f in features]
    refused = []
    for s in specs:
        if s.role == "prohibited":
            refused.append(f"{s.name} (prohibited: {s.phi_class})")
        elif s.role == "evaluation-only" and s.name not in t.allow_sensitive:
            refused.append(f"{s.name} (evaluation-only)")
    if refused:
        raise GovernanceError(
            f"task {t.name!r} may not use as model inputs: {', '.join(refused)}; evaluation-only attributes are "
            "for fairness evaluation and monitoring (a task must allow them explicitly in allow_sensitive)"
        )
    return specs
