-- Webhooks shared fairly between clients (issue #25, point 4).
--
-- The delivery task claims due events client by client, in turns: it lists the clients with a due
-- event (`GROUP BY client_id` with `next_attempt_at <= NOW(6)`, a loose scan of this index: one
-- step per client, however many events each has due), then takes each chosen client's oldest due
-- events (one range of this index). An endpoint whose circuit is open has its due events moved to
-- the end of its cool-off (one range of this index too). The due index stays for the gauges.
ALTER TABLE webhook_events
    ADD KEY ix_webhook_events_client_due (client_id, next_attempt_at);
