-- careloop's own bookkeeping next to the CDM tables (schema `omop`). Not part of the CDM; see docs/omop.md.

-- Latest version seen per FHIR resource / DICOM series (tombstones kept after deletes so that a late older
-- version never resurrects a deleted or newer row). The upsert decision is taken against this table.
CREATE TABLE IF NOT EXISTS omop.fhir_source_versions (
    resource_type   VARCHAR,
    resource_id     VARCHAR,
    person_key      VARCHAR,      -- pseudonymous person id (Kafka key)
    version_id      VARCHAR,
    version_rank    BIGINT,       -- numeric meta.versionId when numeric, else NULL
    last_updated    TIMESTAMPTZ,
    deleted         BOOLEAN,
    content_hash    VARCHAR,
    event_id        VARCHAR,
    kafka_ref       VARCHAR,      -- topic/partition/offset of the event that set this version
    updated_at      TIMESTAMPTZ
);

-- Which OMOP rows each source resource currently produced: an update or delete removes exactly these rows,
-- whatever table the previous version was routed to.
CREATE TABLE IF NOT EXISTS omop.fhir_row_map (
    resource_type   VARCHAR,
    resource_id     VARCHAR,
    omop_table      VARCHAR,
    omop_row_id     BIGINT,
    person_id       BIGINT
);

-- Data-quality results per micro-batch (OHDSI DQD style: one row per check and table).
CREATE TABLE IF NOT EXISTS omop.dq_results (
    batch_id        VARCHAR,
    run_id          VARCHAR,
    checked_at      TIMESTAMPTZ,
    check_name      VARCHAR,
    category        VARCHAR,      -- completeness | conformance | plausibility
    cdm_table       VARCHAR,
    cdm_field       VARCHAR,
    severity        VARCHAR,      -- flag | deadletter
    num_violated    BIGINT,
    num_rows        BIGINT,
    pct_violated    DOUBLE
);

-- Record-level flags for rows that loaded with a data-quality warning.
CREATE TABLE IF NOT EXISTS omop.dq_flags (
    batch_id        VARCHAR,
    omop_table      VARCHAR,
    omop_row_id     BIGINT,
    check_name      VARCHAR,
    detail          VARCHAR,
    flagged_at      TIMESTAMPTZ
);

-- Resources received but not mapped to the CDM (Claim, ExplanationOfBenefit, ...): counted, never silently lost.
CREATE TABLE IF NOT EXISTS omop.skipped_resources (
    batch_id        VARCHAR,
    resource_type   VARCHAR,
    reason          VARCHAR,
    n               BIGINT,
    recorded_at     TIMESTAMPTZ
);

-- One row per committed stream micro-batch (or backfill run): what `careloop stream status` shows.
CREATE TABLE IF NOT EXISTS omop.stream_status (
    run_id          VARCHAR,
    batch_id        VARCHAR,
    batch_seq       BIGINT,
    mode            VARCHAR,      -- stream | backfill
    committed_at    TIMESTAMPTZ,
    events          BIGINT,
    resources       BIGINT,
    rows_written    BIGINT,
    rows_deleted    BIGINT,
    dead_letters    BIGINT,
    skipped         BIGINT,
    stale           BIGINT,       -- late older versions and re-deliveries that changed nothing
    batch_latency_ms DOUBLE,
    events_per_s    DOUBLE,
    consumer_lag    BIGINT,
    lag_detail      VARCHAR,      -- JSON {topic/partition: lag}
    min_event_time  TIMESTAMPTZ,
    max_event_time  TIMESTAMPTZ
);

CREATE OR REPLACE VIEW omop.unmapped_codes AS
SELECT 'condition_occurrence' AS cdm_table, condition_source_value AS source_value, count(*) AS n
  FROM omop.condition_occurrence WHERE condition_concept_id = 0 GROUP BY ALL
UNION ALL
SELECT 'measurement', measurement_source_value, count(*) FROM omop.measurement WHERE measurement_concept_id = 0 GROUP BY ALL
UNION ALL
SELECT 'observation', observation_source_value, count(*) FROM omop.observation WHERE observation_concept_id = 0 GROUP BY ALL
UNION ALL
SELECT 'drug_exposure', drug_source_value, count(*) FROM omop.drug_exposure WHERE drug_concept_id = 0 GROUP BY ALL
UNION ALL
SELECT 'procedure_occurrence', procedure_source_value, count(*) FROM omop.procedure_occurrence
  WHERE procedure_concept_id = 0 GROUP BY ALL
UNION ALL
SELECT 'visit_occurrence', visit_source_value, count(*) FROM omop.visit_occurrence WHERE visit_concept_id = 0 GROUP BY ALL
UNION ALL
SELECT 'measurement.unit', unit_source_value, count(*) FROM omop.measurement
  WHERE unit_source_value IS NOT NULL AND coalesce(unit_concept_id, 0) = 0 GROUP BY ALL;
