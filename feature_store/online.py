"""Online-store writes of validated feature rows as one prepared batch per stream batch.

Feast's `ingest_df`/`push` path converts a pandas frame to Arrow and then to protobuf values through generic,
per-value type dispatch, and its SQLite store runs one `INSERT … ON CONFLICT` statement and one commit per feature
view: ~0.7 s for 170 persons x 7 views (measured). Here the rows arrive as Arrow tables of the views' exact types,
so the protobuf values are built per column with one constructor each, and — for Feast's SQLite store — every view
is written with `executemany` in ONE transaction (the same table, rows and upsert as Feast's own
`online_write_batch`, so Feast reads them back unchanged; tested against Feast's converter). Any other online
store (Redis) gets the same prepared batch through Feast's `online_write_batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from feature_store.definitions import VIEW_BY_NAME
from feature_store.repo import CREATED, JOIN_KEY, TS

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

Row = tuple[Any, dict[str, Any], datetime, datetime | None]  # Feast's (entity key, values, event ts, created ts)
_PROTO_FIELD = {"float": "double_val", "int": "int64_val", "bool": "bool_val", "string": "string_val"}


def latest_per_person(table: pa.Table) -> pa.Table:
    """Each person's latest row (by event time, then created time, then input order): Feast's online stores
    overwrite unconditionally, so an older row must never be written after a newer one."""
    import numpy as np
    import pyarrow as pa

    if table.num_rows == 0:
        return table
    order = ["person_id", TS] + ([CREATED] if CREATED in table.column_names else [])
    idx = pa.array(np.arange(table.num_rows))
    ranked = table.append_column("_fs_i", idx).sort_by([(c, "ascending") for c in [*order, "_fs_i"]])
    pid = ranked.column(JOIN_KEY).to_numpy()
    last = np.append(pid[1:] != pid[:-1], True)
    return ranked.filter(pa.array(last)).drop_columns(["_fs_i"])


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def prepare_rows(view: str, table: pa.Table) -> list[Row]:
    """Feast's online-write rows (what `feast.utils._convert_arrow_to_proto` builds) for a table of the view's
    exact Arrow types: null (and NaN) values become an empty `ValueProto`, as in Feast."""
    import math

    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    spec = VIEW_BY_NAME[view]
    empty = Value()
    columns: dict[str, list[Any]] = {}
    for f in spec.features:
        field = _PROTO_FIELD[f.dtype]
        values = table.column(f.name).to_pylist()
        if f.dtype == "float":
            columns[f.name] = [empty if v is None or math.isnan(v) else Value(double_val=v) for v in values]
        else:
            columns[f.name] = [empty if v is None else Value(**{field: v}) for v in values]
    names = list(columns)
    keys = [
        EntityKey(join_keys=[JOIN_KEY], entity_values=[Value(int64_val=p)]) for p in table.column(JOIN_KEY).to_pylist()
    ]
    event = table.column(TS).to_pylist()  # timezone-aware UTC, as Feast's converter gives them
    created = table.column(CREATED).to_pylist() if CREATED in table.column_names else None
    return [
        (keys[i], dict(zip(names, vals, strict=True)), event[i], created[i] if created else None)
        for i, vals in enumerate(zip(*(columns[n] for n in names), strict=True))
    ]


def _batched_sqlite(store: FeatureStore) -> Any | None:
    """Feast's SQLite online store when its plain table layout is in use (no vector or value_num columns)."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    online = store.provider.online_store
    cfg = store.config.online_store
    if type(online) is not SqliteOnlineStore:
        return None
    if getattr(cfg, "vector_enabled", False) or getattr(cfg, "enable_openai_compatible_store", False):
        return None
    return online


def _text(value: Any) -> str | None:
    """Feast's `value_text` column (`extract_text_and_num`) for the scalar kinds used here."""
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    return value.string_val if kind == "string_val" else str(getattr(value, kind))


def write_rows(store: FeatureStore, views: Mapping[str, Any], rows: Mapping[str, list[Row]]) -> None:
    """Write prepared rows of several views: one SQLite transaction for all of them, or Feast's
    `online_write_batch` per view for any other online store."""
    online = _batched_sqlite(store)
    config = store.config
    if online is None:
        for view, data in rows.items():
            if data:
                store.provider.online_write_batch(config, views[view], data, progress=None)
        return
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    version = config.entity_key_serialization_version
    versioned = config.registry.enable_online_feature_view_versioning
    keys: dict[bytes, bytes] = {}
    statements = []
    for view, data in rows.items():
        if not data:
            continue
        table = _quote_id(_table_id(config.project, views[view], versioned))
        sql = (
            f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts;"
        )
        params = []
        for entity, values, event_ts, created_ts in data:
            raw = entity.SerializeToString()
            key = keys.get(raw)
            if key is None:
                key = keys[raw] = serialize_entity_key(entity, entity_key_serialization_version=version)
            # Feast's sqlite adapter stores a naive datetime as int(dt.timestamp()); computed once per row here
            ets = int(_naive(event_ts).timestamp())
            cts = None if created_ts is None else int(_naive(created_ts).timestamp())
            params += [(key, name, v.SerializeToString(), _text(v), ets, cts) for name, v in values.items()]
        statements.append((sql, params))
    conn = online._get_conn(config)
    with conn:
        for sql, params in statements:
            conn.executemany(sql, params)
