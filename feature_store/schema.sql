-- careloop feature store tables in the lake (schema `features`). See docs/features.md.
CREATE SCHEMA IF NOT EXISTS features;

-- Pushes refused by validation (unknown entity, wrong type, missing timestamp): nothing of these rows reached Feast.
CREATE TABLE IF NOT EXISTS features.rejected (
    rejected_at     TIMESTAMPTZ NOT NULL,
    view            VARCHAR NOT NULL,
    source          VARCHAR,              -- stream | api | backfill
    person_id       VARCHAR,              -- as received (may be unparseable)
    event_timestamp VARCHAR,              -- as received
    reason          VARCHAR NOT NULL,     -- human-readable, no PHI
    payload         VARCHAR               -- the row as JSON (feature values only; no identifiable data)
);

-- Every backfill: which lake snapshot it read and what it wrote.
CREATE TABLE IF NOT EXISTS features.backfills (
    run_id          VARCHAR,
    snapshot_id     BIGINT NOT NULL,
    start_time      TIMESTAMPTZ,
    end_time        TIMESTAMPTZ,
    persons         BIGINT,
    rows            BIGINT,
    partitions      INTEGER,
    scheduler       VARCHAR,
    uri             VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL
);

-- Every training set: the lake snapshot it is reproducible from.
CREATE TABLE IF NOT EXISTS features.training_sets (
    training_set_id VARCHAR NOT NULL,
    service         VARCHAR NOT NULL,
    snapshot_id     BIGINT NOT NULL,
    entity_rows     BIGINT,
    content_hash    VARCHAR,
    uri             VARCHAR,
    run_id          VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL
);

-- Reference distribution of each feature in each training set (read by monitoring for drift).
CREATE TABLE IF NOT EXISTS features.reference_distributions (
    training_set_id VARCHAR NOT NULL,
    service         VARCHAR NOT NULL,
    snapshot_id     BIGINT NOT NULL,
    feature         VARCHAR NOT NULL,
    view            VARCHAR,
    kind            VARCHAR NOT NULL,     -- numeric | categorical
    n               BIGINT,
    n_null          BIGINT,
    mean            DOUBLE,
    std             DOUBLE,
    min             DOUBLE,
    max             DOUBLE,
    quantiles       VARCHAR,              -- JSON {"0.01": v, ..., "0.99": v}
    histogram       VARCHAR,              -- JSON {"edges": [...], "counts": [...]} (numeric) or {"value": count}
    created_at      TIMESTAMPTZ NOT NULL
);
