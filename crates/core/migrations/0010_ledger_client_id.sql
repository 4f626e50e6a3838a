-- Members per client, expand step: the ledger gets the client of each row's job. The column is
-- nullable and added last, which MariaDB does in place of the table's metadata only
-- (`ALGORITHM=INSTANT`, named so that a server unable to do so fails here at once instead of
-- copying the table inside `init`'s deadline). The listener fills it for every row it writes from
-- now on; old rows are filled, and the index `(client_id, member_id, id)` built, by
-- `accrualctl backfill ledger-client-ids`, run outside `init` (see docs/operations.md).
ALTER TABLE point_accruals
    ADD COLUMN client_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ALGORITHM = INSTANT;
