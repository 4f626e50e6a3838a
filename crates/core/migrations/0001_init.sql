-- Initial schema: members, the append-only ledger, durable jobs and their chunks, dead letters.
-- member_id and point_type are ASCII with a binary collation: the API restricts them to ASCII,
-- and "Alice" and "alice" are different members.

CREATE TABLE IF NOT EXISTS members (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    member_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at DATETIME(6) NOT NULL,
    UNIQUE KEY uq_members_member_id (member_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS point_accruals (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    accrual_id  BINARY(16) NOT NULL,
    job_id      BINARY(16) NOT NULL,
    member_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    point_type  VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount      BIGINT NOT NULL,
    reason      VARCHAR(255) NULL,
    expires_at  DATETIME(6) NULL,
    accepted_at DATETIME(6) NOT NULL,
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_point_accruals_accrual_id (accrual_id),
    KEY ix_point_accruals_job_id (job_id),
    KEY ix_point_accruals_member_id (member_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS accrual_jobs (
    job_id          BINARY(16) NOT NULL PRIMARY KEY,
    client_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idempotency_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    body_sha256     BINARY(32) NOT NULL,
    total           INT UNSIGNED NOT NULL,
    members         INT UNSIGNED NOT NULL,
    status          VARCHAR(32) CHARACTER SET ascii NOT NULL,
    reserve_at      DATETIME(6) NULL,
    created_at      DATETIME(6) NOT NULL,
    completed_at    DATETIME(6) NULL,
    UNIQUE KEY uq_accrual_jobs_client_key (client_id, idempotency_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS accrual_chunks (
    job_id        BINARY(16) NOT NULL,
    seq           INT UNSIGNED NOT NULL,
    items         MEDIUMBLOB NOT NULL,
    item_count    INT UNSIGNED NOT NULL,
    due_at        DATETIME(6) NOT NULL,
    dispatched_at DATETIME(6) NULL,
    dispatched_by VARCHAR(64) NULL,
    lease_owner   VARCHAR(64) NULL,
    lease_until   DATETIME(6) NULL,
    PRIMARY KEY (job_id, seq),
    KEY ix_accrual_chunks_due (dispatched_at, due_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Points the listener dead-lettered, so a job's final state can be computed from MySQL alone.
CREATE TABLE IF NOT EXISTS accrual_dead_letters (
    accrual_id BINARY(16) NOT NULL PRIMARY KEY,
    job_id     BINARY(16) NOT NULL,
    reason     VARCHAR(1000) NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY ix_accrual_dead_letters_job_id (job_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
