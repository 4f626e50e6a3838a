-- Jobs a CRM works with: a label (a campaign name) to find them by, indexes that make a page of a
-- client's job list cheap with or without a status or label filter, and what retention needs.
ALTER TABLE accrual_jobs
    ADD COLUMN label VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN results_purged_at DATETIME(6) NULL,
    ADD KEY ix_accrual_jobs_client_created (client_id, created_at, job_id),
    ADD KEY ix_accrual_jobs_client_status (client_id, status, created_at, job_id),
    ADD KEY ix_accrual_jobs_client_label (client_id, label, created_at, job_id),
    ADD KEY ix_accrual_jobs_results_purge (results_purged_at, completed_at),
    ADD KEY ix_accrual_jobs_idempotency_age (created_at, idempotency_key);

-- Leases on background work that one sender replica at a time should do (retention).
CREATE TABLE IF NOT EXISTS maintenance_leases (
    name        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    owner       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    lease_until DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
