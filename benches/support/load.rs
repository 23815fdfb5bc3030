//! What the benchmarks share: driving a closed-loop load and printing its figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use medflow_http::policy::Role;
use tokio::sync::Mutex;

pub struct Figures {
    pub requests: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub errors: u64,
}

impl Figures {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn print(&self, name: &str) {
        println!(
            "{name:<46} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {} errors)",
            self.per_second(),
            self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.requests,
            self.errors
        );
    }
}

/// Runs a benchmark's `run` on a multi-threaded runtime, if `script` started the private
/// stack it needs (PostgreSQL and the broker, named by the environment).
pub fn on_private_stack<F: std::future::Future<Output = ()>>(script: &str, run: F) {
    if std::env::var("MEDFLOW_TEST_DATABASE_URL").is_err() {
        eprintln!("the benchmark needs the private stack: run {script}");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run);
}

/// Runs `clients` loops of `operation` for `phase` after `warmup`, recording the latency of
/// every operation that started after the warm-up; `operation(n)` gets a running number and
/// answers whether it succeeded.
pub async fn drive<F, Fut>(
    clients: usize,
    phase: Duration,
    warmup: Duration,
    operation: F,
) -> Figures
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let operation = Arc::new(operation);
    let counter = Arc::new(AtomicUsize::new(0));
    let warm_until = Instant::now() + warmup;
    let stop_at = warm_until + phase;
    let merged = Arc::new(Mutex::new((Histogram::<u64>::new(3).unwrap(), 0u64, 0u64)));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (operation, counter, merged) = (operation.clone(), counter.clone(), merged.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).unwrap();
                let (mut ok, mut failed) = (0u64, 0u64);
                loop {
                    let started = Instant::now();
                    if started >= stop_at {
                        break;
                    }
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let succeeded = operation(n).await;
                    if started >= warm_until {
                        histogram
                            .record(started.elapsed().as_micros() as u64)
                            .unwrap();
                        if succeeded { ok += 1 } else { failed += 1 }
                    }
                }
                let mut merged = merged.lock().await;
                merged.0.add(&histogram).unwrap();
                merged.1 += ok;
                merged.2 += failed;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (latency, requests, errors) = Arc::try_unwrap(merged).ok().unwrap().into_inner();
    Figures {
        requests,
        elapsed: phase,
        latency,
        errors,
    }
}

/// A client sending a registrar-and-doctor token of `app`'s issuer with every request, as in
/// production (its verification is part of the cost), keeping up to `idle` connections.
pub fn staff_client(app: &crate::helpers::TestApp, idle: usize) -> reqwest::Client {
    let token = crate::helpers::mint(
        &app.auth,
        &app.staff_subject,
        &[Role::Registrar, Role::Doctor],
        None,
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .default_headers(headers)
        .build()
        .unwrap()
}
