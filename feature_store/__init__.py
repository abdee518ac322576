"""Feature store: OMOP-derived features in Feast — streaming push, Dask backfill, point-in-time training sets and
governance metadata. Feast itself is imported lazily (it costs seconds), so importing this package is cheap."""

from __future__ import annotations

from feature_store.backfill import BackfillResult, backfill
from feature_store.definitions import DEFAULT_TASK, FEATURES, TASKS, VIEWS, FeatureSpec, Task, ViewSpec
from feature_store.derive import Derived, current_snapshot, derive, split_views
from feature_store.errors import FeaturePushError, FeatureStoreError, GovernanceError
from feature_store.governance import check_model_inputs, describe
from feature_store.push import PushResult, push_frame
from feature_store.repo import apply, open_store
from feature_store.sample import load_omop_csv
from feature_store.stream import StreamFeatureHook
from feature_store.training import TrainingSet, reference_distributions, training_set

__all__ = [
    "DEFAULT_TASK",
    "FEATURES",
    "TASKS",
    "VIEWS",
    "BackfillResult",
    "Derived",
    "FeaturePushError",
    "FeatureSpec",
    "FeatureStoreError",
    "GovernanceError",
    "PushResult",
    "StreamFeatureHook",
    "Task",
    "TrainingSet",
    "ViewSpec",
    "apply",
    "backfill",
    "check_model_inputs",
    "current_snapshot",
    "derive",
    "describe",
    "load_omop_csv",
    "open_store",
    "push_frame",
    "reference_distributions",
    "split_views",
    "training_set",
]
