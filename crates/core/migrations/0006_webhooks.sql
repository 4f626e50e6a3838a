-- Signed webhooks (issue #15, point 3): one endpoint per client, a durable outbox of events written
-- in the same transaction as the job's state change, and every delivery attempt.

-- The operator sets an endpoint with `accrualctl webhooks set`; the secret signs every delivery
-- (HMAC-SHA256), so it is kept as given, not as a digest.
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    client_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    url        VARCHAR(2048) NOT NULL,
    secret     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The outbox. `next_attempt_at` is set while the event is to be delivered and NULL once it is
-- finished (delivered_at or gave_up_at set); the due index makes "due events" one range scan.
CREATE TABLE IF NOT EXISTS webhook_events (
    event_id        BINARY(16) NOT NULL PRIMARY KEY,
    client_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    event           VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    job_id          BINARY(16) NOT NULL,
    body            MEDIUMTEXT NOT NULL,
    created_at      DATETIME(6) NOT NULL,
    attempts        INT UNSIGNED NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NULL,
    delivered_at    DATETIME(6) NULL,
    gave_up_at      DATETIME(6) NULL,
    last_status     SMALLINT UNSIGNED NULL,
    last_error      VARCHAR(512) NULL,
    KEY ix_webhook_events_due (next_attempt_at),
    KEY ix_webhook_events_client (client_id, created_at),
    KEY ix_webhook_events_job (job_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per delivery attempt: the HTTP status, or the error when there was none.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    event_id     BINARY(16) NOT NULL,
    attempt      INT UNSIGNED NOT NULL,
    attempted_at DATETIME(6) NOT NULL,
    http_status  SMALLINT UNSIGNED NULL,
    error        VARCHAR(512) NULL,
    duration_ms  INT UNSIGNED NOT NULL,
    PRIMARY KEY (event_id, attempt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
