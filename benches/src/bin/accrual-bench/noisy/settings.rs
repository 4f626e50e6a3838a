//! The noisy-neighbor mode's arguments, its clients and what the sender is given.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;

use crate::Args;

/// The clients and their keys (development keys, `client:key`).
pub const KEYS: [(&str, &str); 3] = [
    ("a", "noisy-key-a"),
    ("b", "noisy-key-b"),
    ("c", "noisy-key-c"),
];
pub const KEY_A: &str = KEYS[0].1;
pub const KEY_B: &str = KEYS[1].1;
pub const KEY_C: &str = KEYS[2].1;

#[derive(clap::Args, Debug, Clone)]
pub struct NoisyArgs {
    /// Noisy-neighbor mode: client b's small jobs alone, client a's campaign (`--points`) alone,
    /// both at once, then a's and c's campaigns together for their shares of dispatch; one sender,
    /// the usual listeners. Skips the raw measurements and the results phase.
    #[arg(long)]
    pub noisy_neighbor: bool,
    /// With `--noisy-neighbor`: seconds between two of client b's jobs.
    #[arg(long, default_value_t = 3.0)]
    pub neighbor_every: f64,
    /// With `--noisy-neighbor`: client b's jobs when it is alone (beside a's campaign it posts
    /// until the campaign is written).
    #[arg(long, default_value_t = 10)]
    pub neighbor_jobs: usize,
    /// With `--noisy-neighbor`: points in each of client b's jobs.
    #[arg(long, default_value_t = 50)]
    pub neighbor_points: usize,
    /// With `--noisy-neighbor`: the sender's DISPATCH_CLIENT_WEIGHTS. a and b weigh the same by
    /// default, c half as much as a (its share in phase 4 is a third).
    #[arg(long, env = "DISPATCH_CLIENT_WEIGHTS", default_value = "a=2,b=2,c=1")]
    pub client_weights: String,
    /// With `--noisy-neighbor`: points of each of a's and c's campaigns in the shares phase
    /// (0: `--points`).
    #[arg(long, default_value_t = 0)]
    pub share_points: usize,
    /// With `--noisy-neighbor`: seconds of one share window (sampled every second, or four times a
    /// window when it is shorter than 4 s).
    #[arg(long, default_value_t = 60.0)]
    pub share_window: f64,
}

impl NoisyArgs {
    /// The weight of `client` in `--client-weights` (1 when not named, as the sender does).
    pub fn weight(&self, client: &str) -> f64 {
        self.client_weights
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .find(|(c, _)| c.trim() == client)
            .and_then(|(_, w)| w.trim().parse().ok())
            .unwrap_or(1.0)
    }

    pub fn every(&self) -> Duration {
        Duration::from_secs_f64(self.neighbor_every)
    }
}

/// Settles the arguments: checked values, no raw measurements, no results phase, and the label
/// `noisy-neighbor` (followed by `--label` if one was given).
pub fn prepare(mut args: Args) -> anyhow::Result<Args> {
    let n = &mut args.noisy;
    if args.accept_latency {
        bail!("--noisy-neighbor and --accept-latency are separate modes");
    }
    if !(n.neighbor_every.is_finite() && n.neighbor_every > 0.0) {
        bail!("--neighbor-every must be a number of seconds above 0");
    }
    if !(n.share_window.is_finite() && n.share_window > 0.0) {
        bail!("--share-window must be a number of seconds above 0");
    }
    if n.neighbor_jobs == 0 {
        bail!("--neighbor-jobs must be at least 1");
    }
    if !(1..=accrual_core::wire::MAX_ITEMS_PER_REQUEST).contains(&n.neighbor_points) {
        bail!("--neighbor-points must be 1 to one request's items");
    }
    for pair in n.client_weights.split(',').filter(|p| !p.trim().is_empty()) {
        let weight = pair
            .split_once('=')
            .and_then(|(_, w)| w.trim().parse::<f64>().ok());
        if !weight.is_some_and(|w| (0.01..=1000.0).contains(&w)) {
            bail!("--client-weights: `{pair}` is not client=weight (0.01-1000)");
        }
    }
    if n.share_points == 0 {
        n.share_points = args.points;
    }
    args.raw_sqs_points = 0;
    args.no_results = true;
    args.label = if args.label == "run" {
        "noisy-neighbor".into()
    } else {
        format!("noisy-neighbor-{}", args.label)
    };
    Ok(args)
}

/// What the sender gets on top of the bench's environment: the three clients and their weights.
pub fn sender_env(args: &Args) -> Vec<(String, String)> {
    let keys = KEYS
        .map(|(client, key)| format!("{client}:{key}"))
        .join(",");
    vec![
        ("ACCRUAL_API_KEYS".into(), keys),
        (
            "DISPATCH_CLIENT_WEIGHTS".into(),
            args.noisy.client_weights.clone(),
        ),
    ]
}

/// The dispatch settings the sender got: the bench's own and what it inherits from the
/// environment (`DISPATCH_*`); the rest are the sender's defaults.
pub fn sender_settings(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut settings: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("DISPATCH_"))
        .collect();
    settings.extend(
        env.iter()
            .filter(|(k, _)| {
                k.starts_with("DISPATCH_")
                    || k == "SEND_CONCURRENCY"
                    || k == "ACCRUAL_POINTS_PER_MESSAGE"
            })
            .cloned(),
    );
    settings.into_iter().collect()
}
