-- A short queue (issue #27, point 2): the points every replica's dispatchers have claimed, in all
-- time, on the clients' clock row that each claim already updates. Read beside the queue's depth,
-- it gives the rate at which the listeners drain the queue (the points that went in, less the
-- growth of the queue), which sets how deep the queue may be (`DISPATCH_QUEUE_HORIZON`) and the
-- estimated start and finish of a waiting job.
ALTER TABLE dispatch_clock
    ADD COLUMN claimed_points BIGINT UNSIGNED NOT NULL DEFAULT 0;
