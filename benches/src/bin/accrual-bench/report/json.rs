//! The report as JSON, written to `--results-dir`: the run's settings, the raw limits, the
//! pipeline's figures and each process's use.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use accrual_benches::stats::ms;

use super::{MIB, Report, round};
use crate::pipeline::ProcessUse;
use crate::raw::RawOutcome;

impl Report {
    pub fn to_json(&self) -> Value {
        if let Some(noisy) = &self.noisy {
            return noisy.json(self);
        }
        let p = &self.pipeline;
        let process = |u: &ProcessUse| {
            json!({
                "name": u.name,
                "cpu_seconds": round(u.cpu_seconds, 2),
                "cpu_us_per_point": round(self.cpu_us_per_point(u.cpu_seconds), 2),
                "peak_rss_mib": round(u.peak_rss_kib as f64 / MIB, 1),
                "largest_rss_sample_mib": round(u.max_sampled_rss_kib as f64 / MIB, 1),
            })
        };
        let raw = |r: &Option<RawOutcome>| {
            r.map(|r| {
                json!({
                    "items": r.items,
                    "seconds": round(r.elapsed.as_secs_f64(), 2),
                    "per_second": r.per_second().round(),
                    "client_cpu_us_per_item": round(r.cpu_us_per_item(), 2),
                    "calls": r.calls,
                    "calls_per_item": round(r.calls_per_item(), 4),
                })
            })
        };
        let mut value = json!({
            "id": self.id,
            "label": self.args.label,
            "emulator": self.args.emulator(),
            "finished_at": chrono::Utc::now().to_rfc3339(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "workload": {
                "points": self.points(),
                "members": self.members,
                "requests": self.requests,
                "items_per_request": self.args.items_per_request,
                "concurrency": self.args.concurrency,
                "largest_body_bytes": self.largest_body,
                "listeners": self.listeners.len(),
                "external_ids": self.args.external_ids,
            },
            "settings": {
                "dispatch_tasks": self.args.dispatch_tasks,
                "send_concurrency": self.args.send_concurrency,
                "receive_tasks": self.args.receive_tasks,
                "batch_max_rows": self.args.batch_max_rows,
                "points_per_message": self.args.points_per_message,
                "dispatch_queue_horizon": self.args.queue_horizon(),
                "dispatch_poll": std::env::var("DISPATCH_POLL").unwrap_or_else(|_| "1s".into()),
                "raw_mysql_connections": self.args.raw_mysql_connections,
            },
            "pipeline": {
                "accept_latency_ms": {
                    "p50": ms(self.latency(0.5)).round(),
                    "p99": ms(self.latency(0.99)).round(),
                    "max": ms(self.latency(1.0)).round(),
                },
                "all_accepted_seconds": round(p.all_accepted.as_secs_f64(), 2),
                "all_enqueued_seconds": round(p.all_enqueued.as_secs_f64(), 2),
                "all_in_mysql_seconds": round(p.all_in_mysql.as_secs_f64(), 2),
                "points_per_second": self.points_per_second().round(),
                "points_received_again": p.duplicates,
                "sqs_calls": {
                    "send": p.sqs_calls.send,
                    "receive": p.sqs_calls.receive,
                    "delete": p.sqs_calls.delete,
                    "per_point": round(self.calls_per_point(), 4),
                },
                "sender_peak_rss_after_accepting_mib": round(p.sender_peak_rss_accepting_kib as f64 / MIB, 1),
            },
            "processes": std::iter::once(&self.sender).chain(&self.listeners).map(process).collect::<Vec<_>>(),
            "cpu_us_per_point": {
                "sender": round(self.cpu_us_per_point(self.sender.cpu_seconds), 2),
                "listeners": round(self.cpu_us_per_point(self.listeners_cpu()), 2),
                "ours": round(self.own_cpu_us_per_point(), 2),
            },
            "raw_sqs_round_trip": raw(&self.raw_sqs),
            "raw_mysql_insert": raw(&self.raw_mysql),
            "results": self.results.map(|r| json!({
                "records": r.records,
                "bytes": r.bytes,
                "seconds": round(r.elapsed.as_secs_f64(), 2),
                "records_per_second": r.records_per_second().round(),
                "slowest_job_seconds": round(r.slowest_job.as_secs_f64(), 2),
                "sender_idle_rss_mib": round(r.sender_idle_rss_kib as f64 / MIB, 1),
                "sender_rss_before_mib": round(r.sender_rss_before_kib as f64 / MIB, 1),
                "sender_max_rss_during_mib": round(r.sender_max_rss_during_kib as f64 / MIB, 1),
            })),
            "ratios": {
                "end_to_end_to_raw_sqs": self.raw_sqs.map(|s| round(self.points_per_second() / s.per_second(), 3)),
                "end_to_end_to_raw_mysql": self.raw_mysql.map(|m| round(self.points_per_second() / m.per_second(), 3)),
                "own_cpu_to_sdk_cpu": self.raw_sqs.map(|s| round(self.own_cpu_us_per_point() / s.cpu_us_per_item(), 3)),
                "end_to_end_to_slower_raw": self.slower_raw_limit().map(|l| round(self.points_per_second() / l, 3)),
            },
            "targets": self.targets().iter().map(|t| json!({
                "name": t.name, "goal": t.goal, "value": t.value, "met": t.met,
            })).collect::<Vec<_>>(),
        });
        if let Some(a) = &self.accept_latency {
            value["mode"] = "accept-latency".into();
            value["accept_latency"] = a.json();
        }
        value
    }

    /// Writes the JSON to `dir/<UTC time>-<label>-<emulator>-<points>.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let name = format!(
            "{}-{}-{}-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            self.args.label,
            self.args.emulator(),
            self.points()
        );
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&self.to_json())? + "\n")?;
        Ok(path)
    }
}
