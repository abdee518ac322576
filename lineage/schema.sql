-- careloop lineage store (DuckLake schema `lineage`). Append-only tables: concurrent writers never conflict on
-- inserts, and the views give the current picture. See docs/lineage.md.
CREATE SCHEMA IF NOT EXISTS lineage;

CREATE TABLE IF NOT EXISTS lineage.run_log (
    run_id        VARCHAR NOT NULL,
    job           VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,      -- started | succeeded | failed | interrupted
    "at"          TIMESTAMPTZ NOT NULL,
    code_version  VARCHAR,
    parameters    VARCHAR,               -- JSON
    host          VARCHAR,
    pid           INTEGER,
    message       VARCHAR
);

CREATE TABLE IF NOT EXISTS lineage.dataset_versions (
    dataset       VARCHAR NOT NULL,      -- e.g. omop.measurement, kafka:careloop.fhir, training_set:t2d-365
    kind          VARCHAR NOT NULL,      -- table | topic | file | training_set | model | feature_view
    version       VARCHAR NOT NULL,      -- lake snapshot id, offset range, content hash, model version, ...
    snapshot_id   BIGINT,                -- DuckLake snapshot when the version is a lake state
    content_hash  VARCHAR,
    row_count     BIGINT,
    uri           VARCHAR,
    run_id        VARCHAR,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS lineage.edges (
    run_id        VARCHAR,
    src_kind      VARCHAR NOT NULL,      -- kafka | event | fhir | dicom | omop | feature | training_set | model | prediction | outcome
    src_id        VARCHAR NOT NULL,
    dst_kind      VARCHAR NOT NULL,
    dst_id        VARCHAR NOT NULL,
    relation      VARCHAR NOT NULL,      -- published_as | mapped_to | derived | used | produced | scored | labelled
    recorded_at   TIMESTAMPTZ NOT NULL,
    attrs         VARCHAR                -- JSON, optional
);

CREATE TABLE IF NOT EXISTS lineage.ingest_events (
    event_id      VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,      -- accepted | duplicate | rejected
    stage         VARCHAR,
    event_type    VARCHAR,
    source_system VARCHAR,
    site          VARCHAR,
    resource_type VARCHAR,
    resource_id   VARCHAR,               -- pseudonymous
    content_hash  VARCHAR,
    topic         VARCHAR,
    "partition"   INTEGER,
    "offset"      BIGINT,
    vault_ref     VARCHAR,
    reason        VARCHAR,               -- human-readable, no PHI
    run_id        VARCHAR,
    recorded_at   TIMESTAMPTZ NOT NULL
);

CREATE OR REPLACE VIEW lineage.runs AS
SELECT s.run_id, s.job, s."at" AS started_at, e."at" AS ended_at,
       coalesce(e.status, 'running') AS status, s.code_version, s.parameters, s.host, s.pid, e.message
FROM (SELECT * FROM lineage.run_log WHERE status = 'started') s
LEFT JOIN (
    SELECT * FROM lineage.run_log WHERE status <> 'started'
    QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY "at" DESC) = 1
) e USING (run_id);

CREATE OR REPLACE VIEW lineage.datasets AS
SELECT dataset, any_value(kind) AS kind, count(*) AS versions, min(created_at) AS first_seen,
       max(created_at) AS last_seen, arg_max(version, created_at) AS latest_version
FROM lineage.dataset_versions GROUP BY dataset;
