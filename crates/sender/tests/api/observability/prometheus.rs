//! Debian's Prometheus as a child process of the test, and the parts of its HTTP API the test uses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use accrual_testkit::process::free_port;
use serde_json::Value;
use uuid::Uuid;

/// Debian's Prometheus on a free port, scraping every second and evaluating rules every second;
/// killed when dropped, and its folder removed unless the test failed.
pub struct Prometheus {
    child: Child,
    url: String,
    /// Its configuration, log and TSDB.
    pub dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    pub async fn start(targets: &[(&str, u16)], rules: &Path) -> Self {
        let binary = std::env::var_os("ACCRUAL_PROMETHEUS").map_or_else(
            || {
                let cache = std::env::var_os("ACCRUAL_CACHE_DIR").map_or_else(
                    || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/accrual"),
                    PathBuf::from,
                );
                cache.join("prometheus/usr/bin/prometheus")
            },
            PathBuf::from,
        );
        assert!(
            binary.is_file(),
            "no Prometheus at {}: run scripts/infra/install-prometheus (or set ACCRUAL_PROMETHEUS)",
            binary.display()
        );
        let rules = std::fs::canonicalize(rules).unwrap();
        let dir = std::env::temp_dir().join(format!("accrual-prometheus-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{:?}]\nscrape_configs:\n",
            rules.display().to_string()
        );
        for (job, port) in targets {
            config += &format!(
                "  - {{job_name: {job}, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n"
            );
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        for _ in 0..200 {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(prometheus.dir.join("prometheus.log"));
                panic!("Prometheus exited ({status}):\n{}", log.unwrap_or_default());
            }
            let answer = prometheus.http.get(&ready).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Prometheus did not become ready in 20 s");
    }

    /// `/api/v1/query` at `time` (seconds since the epoch): the result's samples, or Prometheus's
    /// error.
    pub async fn query(&self, promql: &str, time: f64) -> Result<Vec<Value>, String> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql), ("time", &time.to_string())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match answer["data"]["result"].as_array() {
            Some(result) if answer["status"] == "success" => Ok(result.clone()),
            _ => Err(format!("{} {}", answer["errorType"], answer["error"])),
        }
    }

    /// The value at `time` of a query that returns one sample, if it does.
    pub async fn scalar(&self, promql: &str, time: f64) -> Option<f64> {
        let result = self.query(promql, time).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Every rule of every group loaded from the rule files, as `/api/v1/rules` describes it.
    pub async fn rules(&self) -> Vec<Value> {
        let url = format!("{}/api/v1/rules", self.url);
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let groups = answer["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The name of every series Prometheus holds.
    pub async fn metric_names(&self) -> Vec<String> {
        let url = format!("{}/api/v1/label/__name__/values", self.url);
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(answer["data"].clone()).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
