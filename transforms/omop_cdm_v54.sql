-- careloop: OMOP CDM v5.4 tables in the lake schema `omop` (DuckLake: no primary keys, indexes or constraints).
-- Column names and order follow the CDM v5.4 specification; `integer` ids that careloop derives from FHIR
-- logical ids are BIGINT (63-bit hashes), concept ids stay INTEGER, float is DOUBLE, varchar(n) is VARCHAR.
CREATE SCHEMA IF NOT EXISTS omop;

CREATE TABLE IF NOT EXISTS omop.person (
    person_id                           BIGINT,
    gender_concept_id                   INTEGER,
    year_of_birth                       INTEGER,
    month_of_birth                      INTEGER,
    day_of_birth                        INTEGER,
    birth_datetime                      TIMESTAMP,
    race_concept_id                     INTEGER,
    ethnicity_concept_id                INTEGER,
    location_id                         BIGINT,
    provider_id                         BIGINT,
    care_site_id                        BIGINT,
    person_source_value                 VARCHAR,
    gender_source_value                 VARCHAR,
    gender_source_concept_id            INTEGER,
    race_source_value                   VARCHAR,
    race_source_concept_id              INTEGER,
    ethnicity_source_value              VARCHAR,
    ethnicity_source_concept_id         INTEGER
);

CREATE TABLE IF NOT EXISTS omop.observation_period (
    observation_period_id               BIGINT,
    person_id                           BIGINT,
    observation_period_start_date       DATE,
    observation_period_end_date         DATE,
    period_type_concept_id              INTEGER
);

CREATE TABLE IF NOT EXISTS omop.visit_occurrence (
    visit_occurrence_id                 BIGINT,
    person_id                           BIGINT,
    visit_concept_id                    INTEGER,
    visit_start_date                    DATE,
    visit_start_datetime                TIMESTAMP,
    visit_end_date                      DATE,
    visit_end_datetime                  TIMESTAMP,
    visit_type_concept_id               INTEGER,
    provider_id                         BIGINT,
    care_site_id                        BIGINT,
    visit_source_value                  VARCHAR,
    visit_source_concept_id             INTEGER,
    admitted_from_concept_id            INTEGER,
    admitted_from_source_value          VARCHAR,
    discharged_to_concept_id            INTEGER,
    discharged_to_source_value          VARCHAR,
    preceding_visit_occurrence_id       BIGINT
);

CREATE TABLE IF NOT EXISTS omop.visit_detail (
    visit_detail_id                     BIGINT,
    person_id                           BIGINT,
    visit_detail_concept_id             INTEGER,
    visit_detail_start_date             DATE,
    visit_detail_start_datetime         TIMESTAMP,
    visit_detail_end_date               DATE,
    visit_detail_end_datetime           TIMESTAMP,
    visit_detail_type_concept_id        INTEGER,
    provider_id                         BIGINT,
    care_site_id                        BIGINT,
    visit_detail_source_value           VARCHAR,
    visit_detail_source_concept_id      INTEGER,
    admitted_from_concept_id            INTEGER,
    admitted_from_source_value          VARCHAR,
    discharged_to_source_value          VARCHAR,
    discharged_to_concept_id            INTEGER,
    preceding_visit_detail_id           BIGINT,
    parent_visit_detail_id              BIGINT,
    visit_occurrence_id                 BIGINT
);

CREATE TABLE IF NOT EXISTS omop.condition_occurrence (
    condition_occurrence_id             BIGINT,
    person_id                           BIGINT,
    condition_concept_id                INTEGER,
    condition_start_date                DATE,
    condition_start_datetime            TIMESTAMP,
    condition_end_date                  DATE,
    condition_end_datetime              TIMESTAMP,
    condition_type_concept_id           INTEGER,
    condition_status_concept_id         INTEGER,
    stop_reason                         VARCHAR,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    condition_source_value              VARCHAR,
    condition_source_concept_id         INTEGER,
    condition_status_source_value       VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.drug_exposure (
    drug_exposure_id                    BIGINT,
    person_id                           BIGINT,
    drug_concept_id                     INTEGER,
    drug_exposure_start_date            DATE,
    drug_exposure_start_datetime        TIMESTAMP,
    drug_exposure_end_date              DATE,
    drug_exposure_end_datetime          TIMESTAMP,
    verbatim_end_date                   DATE,
    drug_type_concept_id                INTEGER,
    stop_reason                         VARCHAR,
    refills                             INTEGER,
    quantity                            DOUBLE,
    days_supply                         INTEGER,
    sig                                 VARCHAR,
    route_concept_id                    INTEGER,
    lot_number                          VARCHAR,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    drug_source_value                   VARCHAR,
    drug_source_concept_id              INTEGER,
    route_source_value                  VARCHAR,
    dose_unit_source_value              VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.procedure_occurrence (
    procedure_occurrence_id             BIGINT,
    person_id                           BIGINT,
    procedure_concept_id                INTEGER,
    procedure_date                      DATE,
    procedure_datetime                  TIMESTAMP,
    procedure_end_date                  DATE,
    procedure_end_datetime              TIMESTAMP,
    procedure_type_concept_id           INTEGER,
    modifier_concept_id                 INTEGER,
    quantity                            INTEGER,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    procedure_source_value              VARCHAR,
    procedure_source_concept_id         INTEGER,
    modifier_source_value               VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.device_exposure (
    device_exposure_id                  BIGINT,
    person_id                           BIGINT,
    device_concept_id                   INTEGER,
    device_exposure_start_date          DATE,
    device_exposure_start_datetime      TIMESTAMP,
    device_exposure_end_date            DATE,
    device_exposure_end_datetime        TIMESTAMP,
    device_type_concept_id              INTEGER,
    unique_device_id                    VARCHAR,
    production_id                       VARCHAR,
    quantity                            INTEGER,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    device_source_value                 VARCHAR,
    device_source_concept_id            INTEGER,
    unit_concept_id                     INTEGER,
    unit_source_value                   VARCHAR,
    unit_source_concept_id              INTEGER
);

CREATE TABLE IF NOT EXISTS omop.measurement (
    measurement_id                      BIGINT,
    person_id                           BIGINT,
    measurement_concept_id              INTEGER,
    measurement_date                    DATE,
    measurement_datetime                TIMESTAMP,
    measurement_time                    VARCHAR,
    measurement_type_concept_id         INTEGER,
    operator_concept_id                 INTEGER,
    value_as_number                     DOUBLE,
    value_as_concept_id                 INTEGER,
    unit_concept_id                     INTEGER,
    range_low                           DOUBLE,
    range_high                          DOUBLE,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    measurement_source_value            VARCHAR,
    measurement_source_concept_id       INTEGER,
    unit_source_value                   VARCHAR,
    unit_source_concept_id              INTEGER,
    value_source_value                  VARCHAR,
    measurement_event_id                BIGINT,
    meas_event_field_concept_id         INTEGER
);

CREATE TABLE IF NOT EXISTS omop.observation (
    observation_id                      BIGINT,
    person_id                           BIGINT,
    observation_concept_id              INTEGER,
    observation_date                    DATE,
    observation_datetime                TIMESTAMP,
    observation_type_concept_id         INTEGER,
    value_as_number                     DOUBLE,
    value_as_string                     VARCHAR,
    value_as_concept_id                 INTEGER,
    qualifier_concept_id                INTEGER,
    unit_concept_id                     INTEGER,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    observation_source_value            VARCHAR,
    observation_source_concept_id       INTEGER,
    unit_source_value                   VARCHAR,
    qualifier_source_value              VARCHAR,
    value_source_value                  VARCHAR,
    observation_event_id                BIGINT,
    obs_event_field_concept_id          INTEGER
);

CREATE TABLE IF NOT EXISTS omop.death (
    person_id                           BIGINT,
    death_date                          DATE,
    death_datetime                      TIMESTAMP,
    death_type_concept_id               INTEGER,
    cause_concept_id                    INTEGER,
    cause_source_value                  VARCHAR,
    cause_source_concept_id             INTEGER
);

CREATE TABLE IF NOT EXISTS omop.note (
    note_id                             BIGINT,
    person_id                           BIGINT,
    note_date                           DATE,
    note_datetime                       TIMESTAMP,
    note_type_concept_id                INTEGER,
    note_class_concept_id               INTEGER,
    note_title                          VARCHAR,
    note_text                           VARCHAR,
    encoding_concept_id                 INTEGER,
    language_concept_id                 INTEGER,
    provider_id                         BIGINT,
    visit_occurrence_id                 BIGINT,
    visit_detail_id                     BIGINT,
    note_source_value                   VARCHAR,
    note_event_id                       BIGINT,
    note_event_field_concept_id         INTEGER
);

CREATE TABLE IF NOT EXISTS omop.note_nlp (
    note_nlp_id                         BIGINT,
    note_id                             BIGINT,
    section_concept_id                  INTEGER,
    snippet                             VARCHAR,
    "offset"                            VARCHAR,
    lexical_variant                     VARCHAR,
    note_nlp_concept_id                 INTEGER,
    note_nlp_source_concept_id          INTEGER,
    nlp_system                          VARCHAR,
    nlp_date                            DATE,
    nlp_datetime                        TIMESTAMP,
    term_exists                         VARCHAR,
    term_temporal                       VARCHAR,
    term_modifiers                      VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.specimen (
    specimen_id                         BIGINT,
    person_id                           BIGINT,
    specimen_concept_id                 INTEGER,
    specimen_type_concept_id            INTEGER,
    specimen_date                       DATE,
    specimen_datetime                   TIMESTAMP,
    quantity                            DOUBLE,
    unit_concept_id                     INTEGER,
    anatomic_site_concept_id            INTEGER,
    disease_status_concept_id           INTEGER,
    specimen_source_id                  VARCHAR,
    specimen_source_value               VARCHAR,
    unit_source_value                   VARCHAR,
    anatomic_site_source_value          VARCHAR,
    disease_status_source_value         VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.fact_relationship (
    domain_concept_id_1                 INTEGER,
    fact_id_1                           INTEGER,
    domain_concept_id_2                 INTEGER,
    fact_id_2                           INTEGER,
    relationship_concept_id             INTEGER
);

CREATE TABLE IF NOT EXISTS omop.location (
    location_id                         BIGINT,
    address_1                           VARCHAR,
    address_2                           VARCHAR,
    city                                VARCHAR,
    state                               VARCHAR,
    zip                                 VARCHAR,
    county                              VARCHAR,
    location_source_value               VARCHAR,
    country_concept_id                  INTEGER,
    country_source_value                VARCHAR,
    latitude                            DOUBLE,
    longitude                           DOUBLE
);

CREATE TABLE IF NOT EXISTS omop.care_site (
    care_site_id                        BIGINT,
    care_site_name                      VARCHAR,
    place_of_service_concept_id         INTEGER,
    location_id                         BIGINT,
    care_site_source_value              VARCHAR,
    place_of_service_source_value       VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.provider (
    provider_id                         BIGINT,
    provider_name                       VARCHAR,
    npi                                 VARCHAR,
    dea                                 VARCHAR,
    specialty_concept_id                INTEGER,
    care_site_id                        BIGINT,
    year_of_birth                       INTEGER,
    gender_concept_id                   INTEGER,
    provider_source_value               VARCHAR,
    specialty_source_value              VARCHAR,
    specialty_source_concept_id         INTEGER,
    gender_source_value                 VARCHAR,
    gender_source_concept_id            INTEGER
);

CREATE TABLE IF NOT EXISTS omop.payer_plan_period (
    payer_plan_period_id                BIGINT,
    person_id                           BIGINT,
    payer_plan_period_start_date        DATE,
    payer_plan_period_end_date          DATE,
    payer_concept_id                    INTEGER,
    payer_source_value                  VARCHAR,
    payer_source_concept_id             INTEGER,
    plan_concept_id                     INTEGER,
    plan_source_value                   VARCHAR,
    plan_source_concept_id              INTEGER,
    sponsor_concept_id                  INTEGER,
    sponsor_source_value                VARCHAR,
    sponsor_source_concept_id           INTEGER,
    family_source_value                 VARCHAR,
    stop_reason_concept_id              INTEGER,
    stop_reason_source_value            VARCHAR,
    stop_reason_source_concept_id       INTEGER
);

CREATE TABLE IF NOT EXISTS omop.cost (
    cost_id                             BIGINT,
    cost_event_id                       BIGINT,
    cost_domain_id                      VARCHAR,
    cost_type_concept_id                INTEGER,
    currency_concept_id                 INTEGER,
    total_charge                        DOUBLE,
    total_cost                          DOUBLE,
    total_paid                          DOUBLE,
    paid_by_payer                       DOUBLE,
    paid_by_patient                     DOUBLE,
    paid_patient_copay                  DOUBLE,
    paid_patient_coinsurance            DOUBLE,
    paid_patient_deductible             DOUBLE,
    paid_by_primary                     DOUBLE,
    paid_ingredient_cost                DOUBLE,
    paid_dispensing_fee                 DOUBLE,
    payer_plan_period_id                BIGINT,
    amount_allowed                      DOUBLE,
    revenue_code_concept_id             INTEGER,
    revenue_code_source_value           VARCHAR,
    drg_concept_id                      INTEGER,
    drg_source_value                    VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.drug_era (
    drug_era_id                         BIGINT,
    person_id                           BIGINT,
    drug_concept_id                     INTEGER,
    drug_era_start_date                 DATE,
    drug_era_end_date                   DATE,
    drug_exposure_count                 INTEGER,
    gap_days                            INTEGER
);

CREATE TABLE IF NOT EXISTS omop.dose_era (
    dose_era_id                         BIGINT,
    person_id                           BIGINT,
    drug_concept_id                     INTEGER,
    unit_concept_id                     INTEGER,
    dose_value                          DOUBLE,
    dose_era_start_date                 DATE,
    dose_era_end_date                   DATE
);

CREATE TABLE IF NOT EXISTS omop.condition_era (
    condition_era_id                    BIGINT,
    person_id                           BIGINT,
    condition_concept_id                INTEGER,
    condition_era_start_date            DATE,
    condition_era_end_date              DATE,
    condition_occurrence_count          INTEGER
);

CREATE TABLE IF NOT EXISTS omop.episode (
    episode_id                          BIGINT,
    person_id                           BIGINT,
    episode_concept_id                  INTEGER,
    episode_start_date                  DATE,
    episode_start_datetime              TIMESTAMP,
    episode_end_date                    DATE,
    episode_end_datetime                TIMESTAMP,
    episode_parent_id                   BIGINT,
    episode_number                      INTEGER,
    episode_object_concept_id           INTEGER,
    episode_type_concept_id             INTEGER,
    episode_source_value                VARCHAR,
    episode_source_concept_id           INTEGER
);

CREATE TABLE IF NOT EXISTS omop.episode_event (
    episode_id                          BIGINT,
    event_id                            BIGINT,
    episode_event_field_concept_id      INTEGER
);

CREATE TABLE IF NOT EXISTS omop.metadata (
    metadata_id                         BIGINT,
    metadata_concept_id                 INTEGER,
    metadata_type_concept_id            INTEGER,
    name                                VARCHAR,
    value_as_string                     VARCHAR,
    value_as_concept_id                 INTEGER,
    value_as_number                     DOUBLE,
    metadata_date                       DATE,
    metadata_datetime                   TIMESTAMP
);

CREATE TABLE IF NOT EXISTS omop.cdm_source (
    cdm_source_name                     VARCHAR,
    cdm_source_abbreviation             VARCHAR,
    cdm_holder                          VARCHAR,
    source_description                  VARCHAR,
    source_documentation_reference      VARCHAR,
    cdm_etl_reference                   VARCHAR,
    source_release_date                 DATE,
    cdm_release_date                    DATE,
    cdm_version                         VARCHAR,
    cdm_version_concept_id              INTEGER,
    vocabulary_version                  VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.concept (
    concept_id                          INTEGER,
    concept_name                        VARCHAR,
    domain_id                           VARCHAR,
    vocabulary_id                       VARCHAR,
    concept_class_id                    VARCHAR,
    standard_concept                    VARCHAR,
    concept_code                        VARCHAR,
    valid_start_date                    DATE,
    valid_end_date                      DATE,
    invalid_reason                      VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.vocabulary (
    vocabulary_id                       VARCHAR,
    vocabulary_name                     VARCHAR,
    vocabulary_reference                VARCHAR,
    vocabulary_version                  VARCHAR,
    vocabulary_concept_id               INTEGER
);

CREATE TABLE IF NOT EXISTS omop.domain (
    domain_id                           VARCHAR,
    domain_name                         VARCHAR,
    domain_concept_id                   INTEGER
);

CREATE TABLE IF NOT EXISTS omop.concept_class (
    concept_class_id                    VARCHAR,
    concept_class_name                  VARCHAR,
    concept_class_concept_id            INTEGER
);

CREATE TABLE IF NOT EXISTS omop.concept_relationship (
    concept_id_1                        INTEGER,
    concept_id_2                        INTEGER,
    relationship_id                     VARCHAR,
    valid_start_date                    DATE,
    valid_end_date                      DATE,
    invalid_reason                      VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.relationship (
    relationship_id                     VARCHAR,
    relationship_name                   VARCHAR,
    is_hierarchical                     VARCHAR,
    defines_ancestry                    VARCHAR,
    reverse_relationship_id             VARCHAR,
    relationship_concept_id             INTEGER
);

CREATE TABLE IF NOT EXISTS omop.concept_synonym (
    concept_id                          INTEGER,
    concept_synonym_name                VARCHAR,
    language_concept_id                 INTEGER
);

CREATE TABLE IF NOT EXISTS omop.concept_ancestor (
    ancestor_concept_id                 INTEGER,
    descendant_concept_id               INTEGER,
    min_levels_of_separation            INTEGER,
    max_levels_of_separation            INTEGER
);

CREATE TABLE IF NOT EXISTS omop.source_to_concept_map (
    source_code                         VARCHAR,
    source_concept_id                   INTEGER,
    source_vocabulary_id                VARCHAR,
    source_code_description             VARCHAR,
    target_concept_id                   INTEGER,
    target_vocabulary_id                VARCHAR,
    valid_start_date                    DATE,
    valid_end_date                      DATE,
    invalid_reason                      VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.drug_strength (
    drug_concept_id                     INTEGER,
    ingredient_concept_id               INTEGER,
    amount_value                        DOUBLE,
    amount_unit_concept_id              INTEGER,
    numerator_value                     DOUBLE,
    numerator_unit_concept_id           INTEGER,
    denominator_value                   DOUBLE,
    denominator_unit_concept_id         INTEGER,
    box_size                            INTEGER,
    valid_start_date                    DATE,
    valid_end_date                      DATE,
    invalid_reason                      VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.cohort (
    cohort_definition_id                BIGINT,
    subject_id                          BIGINT,
    cohort_start_date                   DATE,
    cohort_end_date                     DATE
);

CREATE TABLE IF NOT EXISTS omop.cohort_definition (
    cohort_definition_id                BIGINT,
    cohort_definition_name              VARCHAR,
    cohort_definition_description       VARCHAR,
    definition_type_concept_id          INTEGER,
    cohort_definition_syntax            VARCHAR,
    subject_concept_id                  INTEGER,
    cohort_initiation_date              DATE
);
-- OHDSI Medical Imaging extension (MI-CDM): one row per imaging series. The columns after modality_concept_id are
-- careloop additions (source values and the acquisition attributes kept for shift monitoring; no pixel data, no PHI).
CREATE TABLE IF NOT EXISTS omop.image_occurrence (
    image_occurrence_id                 BIGINT,
    person_id                           BIGINT,
    procedure_occurrence_id             BIGINT,
    visit_occurrence_id                 BIGINT,
    anatomic_site_concept_id            INTEGER,
    wadors_uri                          VARCHAR,
    local_path                          VARCHAR,
    image_occurrence_date               DATE,
    image_study_uid                     VARCHAR,
    image_series_uid                    VARCHAR,
    modality_concept_id                 INTEGER,
    image_occurrence_datetime           TIMESTAMP,
    modality_source_value               VARCHAR,
    anatomic_site_source_value          VARCHAR,
    manufacturer                        VARCHAR,
    manufacturer_model_name             VARCHAR,
    acquisition                         VARCHAR,
    deid_method                         VARCHAR
);

CREATE TABLE IF NOT EXISTS omop.image_feature (
    image_feature_id                    BIGINT,
    person_id                           BIGINT,
    image_occurrence_id                 BIGINT,
    image_feature_event_field_concept_id INTEGER,
    image_feature_event_id              BIGINT,
    image_feature_concept_id            INTEGER,
    image_feature_type_concept_id       INTEGER,
    image_finding_concept_id            INTEGER,
    image_finding_id                    BIGINT,
    anatomic_site_concept_id            INTEGER,
    alg_system                          VARCHAR,
    alg_datetime                        TIMESTAMP
);
