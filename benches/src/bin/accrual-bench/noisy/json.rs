//! The noisy-neighbor mode's JSON, written to `--results-dir` as the other modes' are.

use std::time::Duration;

use accrual_benches::stats::ms;
use serde_json::{Value, json};

use super::report::{NoisyNeighbor, rounded, secs, spread};
use super::shares::Window;
use crate::pipeline::PipelineOutcome;
use crate::report::Report;

impl NoisyNeighbor {
    pub fn json(&self, report: &Report) -> Value {
        let args = &report.args;
        let n = &args.noisy;
        let latencies = |samples: &[Duration], enqueued: &[Duration]| {
            let [p50, p95, max] = spread(samples);
            let [e50, e95, emax] = spread(enqueued);
            json!({
                "enqueued_p50_ms": ms(e50).round(),
                "enqueued_p95_ms": ms(e95).round(),
                "enqueued_max_ms": ms(emax).round(),
                "jobs": samples.len(),
                "p50_ms": ms(p50).round(),
                "p95_ms": ms(p95).round(),
                "max_ms": ms(max).round(),
                "samples_ms": samples.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
            })
        };
        let campaign = |o: &PipelineOutcome| {
            json!({
                "points_per_second": Self::rate(report, o).round(),
                "all_accepted_seconds": secs(o.all_accepted),
                "all_enqueued_seconds": secs(o.all_enqueued),
                "all_in_mysql_seconds": secs(o.all_in_mysql),
            })
        };
        let s = &self.shares;
        let expected = s.expected();
        let window = |w: &Window| {
            json!({
                "from_seconds": secs(w.from),
                "to_seconds": secs(w.to),
                "dispatched": {s.clients[0]: w.dispatched[0], s.clients[1]: w.dispatched[1]},
                "shares": {s.clients[0]: rounded(w.shares()[0], 4), s.clients[1]: rounded(w.shares()[1], 4)},
                "counted": w.counted(),
                "within": w.counted().then(|| w.met(expected)),
            })
        };
        json!({
            "id": report.id,
            "label": args.label,
            "mode": "noisy-neighbor",
            "emulator": args.emulator(),
            "finished_at": chrono::Utc::now().to_rfc3339(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "workload": {
                "points": args.points,
                "members": report.members,
                "requests": report.requests,
                "items_per_request": args.items_per_request,
                "concurrency": args.concurrency,
                "points_per_message": args.points_per_message,
                "listeners": report.listeners.len(),
                "external_ids": args.external_ids,
                "neighbor_points": n.neighbor_points,
                "neighbor_every_seconds": n.neighbor_every,
                "neighbor_jobs_alone": n.neighbor_jobs,
                "share_points": n.share_points,
            },
            "sender_settings": self.sender_settings.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
            "receive_tasks": args.receive_tasks,
            "batch_max_rows": args.batch_max_rows,
            "warm_up_seconds": secs(self.warm_up),
            "b_alone": latencies(&self.b_alone, &self.b_alone_enqueued),
            "b_with_a": latencies(&self.b_with_a, &self.b_with_a_enqueued),
            "a_alone": campaign(&self.a_alone),
            "a_with_b": campaign(&self.a_with_b),
            "a_with_b_to_alone": rounded(self.ratio(report), 3),
            "shares": {
                "clients": s.clients,
                "weights": s.weights,
                "expected": expected.map(|e| rounded(e, 4)),
                "window_seconds": s.window.as_secs_f64(),
                "sample_every_seconds": s.sample_every.as_secs_f64(),
                "samples": s.samples,
                "all_in_mysql_seconds": secs(s.all_in_mysql),
                "windows": s.windows.iter().map(window).collect::<Vec<_>>(),
            },
            "ledger_points": self.ledger_rows,
            "goals": self.goals(report).iter().map(|g| json!({
                "name": g.name, "goal": g.goal, "value": g.value, "met": g.met,
                "not_judged": g.met.is_none().then_some(g.unjudged),
            })).collect::<Vec<_>>(),
        })
    }
}
