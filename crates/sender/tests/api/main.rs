//! Integration tests of the sender, alone and with a listener, on real MariaDB and LocalStack SQS.
#![allow(clippy::unwrap_used)]

mod accruals;
mod background;
mod backlog;
mod chaos;
mod chaos_edges;
mod clock;
mod contract;
mod dry_run;
mod events;
mod external_ids;
mod front_door;
mod front_door_http;
mod helpers;
mod hung;
mod job_list;
mod jobs;
mod known_members;
mod members;
mod observability;
mod ops;
mod outcome;
mod packed;
mod pipeline;
mod process;
mod reconciler;
mod refused;
mod results;
mod retention;
mod reversal;
mod settlement;
mod webhooks;
