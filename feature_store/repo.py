"""The Feast repository, generated from the declarative specs in `definitions.py`.

A Feast repo is a folder with `feature_store.yaml` plus the object definitions. careloop writes the yaml into
`CARELOOP_HOME/features/<name>/` (so every deployment and test is isolated) and builds the objects in Python here;
`apply` registers them. The live store (`features/live/`) receives streaming pushes; each lake snapshot that a
backfill or training set used gets its own offline store (`features/snapshots/<id>/`) whose Parquet files were
derived from the lake at that snapshot, which is what makes training sets reproducible from the snapshot id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from careloop.settings import Settings
from feature_store.definitions import TASKS, VIEWS, Dtype, ViewSpec
from feature_store.errors import FeatureStoreError

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

PROJECT = "careloop"
ENTITY = "person"
JOIN_KEY = "person_id"
TS = "event_timestamp"
CREATED = "created"
EMPTY_PART = "00000000000000000000-empty.parquet"


def arrow_type(dtype: Dtype) -> pa.DataType:
    import pyarrow as pa

    return {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "string": pa.string()}[dtype]


def view_schema(view: ViewSpec) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(JOIN_KEY, pa.int64()),
            pa.field(TS, pa.timestamp("us", tz="UTC")),
            pa.field(CREATED, pa.timestamp("us", tz="UTC")),
            *(pa.field(f.name, arrow_type(f.dtype)) for f in view.features),
        ]
    )


@dataclass(frozen=True)
class RepoPaths:
    """Where a repo keeps its files. The live repo (`parts=True`) stores each view offline as a folder of
    immutable Parquet part files (a push appends one file, written atomically); a snapshot repo stores one file
    per view, written once by the backfill."""

    root: Path
    parts: bool = False

    @property
    def offline(self) -> Path:
        return self.root / "offline"

    def parquet(self, view: str) -> Path:
        return self.offline / f"{view}.parquet"

    def part_dir(self, view: str) -> Path:
        return self.offline / view

    def source_path(self, view: str) -> str:
        """The Feast FileSource path: a glob over the part files (DuckDB reads them as one table) or the file."""
        return str(self.part_dir(view) / "*.parquet") if self.parts else str(self.parquet(view))


def live_paths(settings: Settings) -> RepoPaths:
    return RepoPaths(settings.path("features", "live"), parts=True)


def snapshot_paths(settings: Settings, snapshot_id: int) -> RepoPaths:
    return RepoPaths(settings.path("features", "snapshots", str(int(snapshot_id))))


def write_yaml(settings: Settings, paths: RepoPaths, *, online: bool = True) -> Path:
    """`feature_store.yaml`: SQLite online store (Redis when configured), DuckDB offline store, file registry (SQL
    registry when configured). Snapshot stores are offline-only, so they always use a local file registry."""
    import yaml

    if online and settings.feature_registry_sql:
        registry: dict[str, Any] = {
            "registry_type": "sql",
            "path": settings.feature_registry_sql,
            "cache_ttl_seconds": 60,
        }
    else:
        registry = {"registry_type": "file", "path": str(paths.root / "registry.db"), "cache_ttl_seconds": 0}
    if online and settings.feature_online_redis:
        online_store: dict[str, Any] = {"type": "redis", "connection_string": settings.feature_online_redis}
    else:
        online_store = {"type": "sqlite", "path": str(paths.root / "online.db")}
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": registry,
        "online_store": online_store,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }
    path = paths.root / "feature_store.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def ensure_parquet(paths: RepoPaths) -> None:
    """Empty, typed Parquet files for views that have no rows yet (Feast cannot read a missing file)."""
    import pyarrow.parquet as pq

    paths.offline.mkdir(parents=True, exist_ok=True)
    for v in VIEWS:
        if paths.parts:
            folder = paths.part_dir(v.name)
            folder.mkdir(exist_ok=True)
            if not any(folder.glob("*.parquet")):  # the glob must match at least one file
                tmp = folder / f".{EMPTY_PART}.tmp"
                pq.write_table(view_schema(v).empty_table(), tmp)
                tmp.replace(folder / EMPTY_PART)
            continue
        p = paths.parquet(v.name)
        if not p.exists():
            pq.write_table(view_schema(v).empty_table(), p)


def build_objects(paths: RepoPaths) -> list[Any]:
    """Entity, file + push sources, feature views (governance tags on every field) and one service per task."""
    from datetime import timedelta

    from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Bool, Float64, Int64, String

    ftype = {"float": Float64, "int": Int64, "bool": Bool, "string": String}
    person = Entity(
        name=ENTITY,
        join_keys=[JOIN_KEY],
        value_type=ValueType.INT64,
        description="OMOP person (pseudonymous; person_source_value is the gateway pseudonym)",
        tags={"phi_class": "pseudonymous-identifier", "owner": "careloop-feature-store"},
    )
    objects: list[Any] = [person]
    views: dict[str, FeatureView] = {}
    for v in VIEWS:
        batch = FileSource(
            name=f"{v.name}_offline",
            path=paths.source_path(v.name),
            timestamp_field=TS,
            created_timestamp_column=CREATED,
        )
        push = PushSource(name=f"{v.name}_push", batch_source=batch)
        fv = FeatureView(
            name=v.name,
            entities=[person],
            ttl=timedelta(days=v.ttl_days),
            schema=[
                Field(name=f.name, dtype=ftype[f.dtype], description=f.description, tags=f.tags()) for f in v.features
            ],
            source=push,
            online=True,
            description=v.description,
            tags={"owner": "careloop-feature-store", "source_tables": ",".join(v.source_tables)},
        )
        views[v.name] = fv
        objects += [batch, push, fv]
    for t in TASKS:
        projections = []
        for v in VIEWS:
            names = [f.name for f in v.features if f.name in t.features]
            if names:
                projections.append(views[v.name][names])
        objects.append(
            FeatureService(
                name=t.name,
                features=projections,
                description=t.description,
                tags={"allow_sensitive": ",".join(sorted(t.allow_sensitive))},
            )
        )
    return objects


def _check_tasks() -> None:
    from feature_store.governance import check_model_inputs

    for t in TASKS:
        check_model_inputs(t.name, t.features)


_STORES: dict[str, FeatureStore] = {}


def open_store(settings: Settings, snapshot_id: int | None = None, *, apply: bool = False) -> FeatureStore:
    """A Feast `FeatureStore` for the live repo (`snapshot_id=None`) or a snapshot's offline repo; cached per
    process (Feast's start-up is seconds). `apply=True` (re)registers the objects, idempotently."""
    paths = live_paths(settings) if snapshot_id is None else snapshot_paths(settings, snapshot_id)
    key = str(paths.root)
    store = _STORES.get(key)
    if store is None or apply or not (paths.root / "feature_store.yaml").exists():
        from feast import FeatureStore

        write_yaml(settings, paths, online=snapshot_id is None)
        ensure_parquet(paths)
        store = FeatureStore(repo_path=str(paths.root))
        _STORES[key] = store
        registered = {fv.name: fv.batch_source.path for fv in _safe_list(store)}
        wanted = {v.name: paths.source_path(v.name) for v in VIEWS}
        if apply or any(registered.get(k) != p for k, p in wanted.items()):
            apply_objects(store, paths)
    return store


_VIEW_CACHE: dict[int, tuple[Any, dict[str, Any]]] = {}


def feature_views(store: FeatureStore) -> dict[str, Any]:
    """The store's registered feature views by name, deserialized once per store object and `apply` (Feast
    rebuilds them from protobuf with runtime type checks on every registry call: ~15 ms per view, 14 lookups
    per push)."""
    hit = _VIEW_CACHE.get(id(store))
    if hit is None or hit[0] is not store:
        hit = (store, {v.name: store.get_feature_view(v.name, allow_registry_cache=True) for v in VIEWS})
        _VIEW_CACHE[id(store)] = hit
    return hit[1]


def _safe_list(store: FeatureStore) -> list[Any]:
    try:
        return store.list_feature_views()
    except Exception:  # an empty registry file
        return []


def apply_objects(store: FeatureStore, paths: RepoPaths) -> dict[str, int]:
    _check_tasks()
    objects = build_objects(paths)
    _VIEW_CACHE.pop(id(store), None)
    try:
        store.apply(objects)
    except Exception as err:
        raise FeatureStoreError(f"feast apply failed: {type(err).__name__}: {err}") from err
    kinds: dict[str, int] = {}
    for o in objects:
        kinds[type(o).__name__] = kinds.get(type(o).__name__, 0) + 1
    return kinds


def apply(settings: Settings) -> dict[str, int]:
    """`careloop features apply`: write the repo config and register every object (idempotent)."""
    paths = live_paths(settings)
    store = open_store(settings)
    return apply_objects(store, paths)
