-- A member's balance counts the points of the client's reserved jobs, which until their release
-- live only in compressed chunks. At acceptance, in the job's own transaction, each reserved job
-- stores its summed amount per (member, point type). Only rows whose job is still `reserved` count
-- (the job's status decides, so a release or a cancel stops counting at once); the sender's
-- retention task deletes the others. The ledger itself gets no new index: its KEY(member_id) is,
-- in InnoDB, (member_id, id), which serves both member queries (see docs/performance.md).
CREATE TABLE IF NOT EXISTS accrual_reserved_amounts (
    job_id     BINARY(16) NOT NULL,
    member_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    point_type VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount     BIGINT NOT NULL,
    PRIMARY KEY (job_id, member_id, point_type),
    KEY ix_accrual_reserved_amounts_member (member_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
