-- Client ids across jobs: an item's optional external_id (the client's own transaction id) is unique
-- per client across all its jobs. The primary key is what makes two concurrent requests unable to
-- both take one id; the row names the point that holds it. No other index: a 500,000-item request
-- claims 500,000 rows in its own transaction, and a second index made that a fifth slower (a
-- cancelled job frees its ids by key, read from its chunks).
CREATE TABLE IF NOT EXISTS accrual_external_ids (
    client_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    external_id VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    accrual_id  BINARY(16) NOT NULL,
    job_id      BINARY(16) NOT NULL,
    PRIMARY KEY (client_id, external_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Items left out of a job with on_duplicate=skip, by request index, with the point that already
-- held the id (in an earlier job, or earlier in the same request): what the job's results show.
CREATE TABLE IF NOT EXISTS accrual_job_skips (
    job_id              BINARY(16) NOT NULL,
    item_index          INT UNSIGNED NOT NULL,
    external_id         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    member_id           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    point_type          VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount              BIGINT NOT NULL,
    existing_accrual_id BINARY(16) NULL,
    existing_job_id     BINARY(16) NULL,
    PRIMARY KEY (job_id, item_index)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

ALTER TABLE accrual_jobs
    ADD COLUMN skipped INT UNSIGNED NOT NULL DEFAULT 0;

-- The ledger row carries the id it was credited under (NULL without one).
ALTER TABLE point_accruals
    ADD COLUMN external_id VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL;
