-- Fair dispatch (issue #27, point 1): due chunks are sent client by client, then job by job
-- within a client, by start-time fair queueing over points, instead of in due order.
--
-- Each client has a finish tag (the points it has been sent, divided by its weight, on a virtual
-- clock) and its own clock for its jobs; each job has a finish tag in points. A dispatcher takes the
-- chunk of the client, then of the job, with the lowest start tag: the larger of its finish tag and
-- the clock above it, so a client or job that was idle starts at the clock and neither takes over
-- nor waits for its past. The tags live here, so every replica's dispatchers share one order.
CREATE TABLE IF NOT EXISTS dispatch_clients (
    client_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    finish    DOUBLE NOT NULL,
    clock     DOUBLE NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The clock of the clients: the start tag of the chunk dispatched last (one row).
CREATE TABLE IF NOT EXISTS dispatch_clock (
    id  TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    tag DOUBLE NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

INSERT IGNORE INTO dispatch_clock (id, tag) VALUES (1, 0);

ALTER TABLE accrual_jobs
    ADD COLUMN dispatch_finish DOUBLE NOT NULL DEFAULT 0;
