//! A rolling update as Kubernetes does it: three instances behind a round-robin balancer
//! that routes new connections only to instances whose `/readyz` answers 200 (as a Service's
//! endpoints follow readiness); under steady load each instance in turn is joined by its
//! successor (maxSurge 1) and then terminated (SIGTERM's path: drain, then stop). No request
//! may fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{TestApp, eventually, patient_body, spawn_app_on, spawn_app_with};

/// How long a terminated instance keeps serving after `/readyz` turned 503; the balancer
/// probes every [`PROBE_EVERY`], so it notices well within the delay.
const DRAIN_DELAY_MS: u64 = 1_000;
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Backends {
    /// Each instance's address and whether its last probe answered 200.
    list: Vec<(SocketAddr, bool)>,
    next: usize,
}

impl Backends {
    fn pick(&mut self) -> Option<SocketAddr> {
        let ready: Vec<SocketAddr> = self
            .list
            .iter()
            .filter(|(_, ready)| *ready)
            .map(|(address, _)| *address)
            .collect();
        if ready.is_empty() {
            return None;
        }
        self.next = self.next.wrapping_add(1);
        Some(ready[self.next % ready.len()])
    }
}

/// A layer-4 round-robin balancer (kube-proxy's behaviour): each client connection is piped
/// to the next ready backend; readiness is probed every [`PROBE_EVERY`].
struct Balancer {
    address: SocketAddr,
    backends: Arc<Mutex<Backends>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Balancer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(Backends::default()));
        let accept = tokio::spawn({
            let backends = backends.clone();
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let target = backends.lock().unwrap().pick();
                    tokio::spawn(async move {
                        // No ready backend, or a refused connection: the client sees its
                        // connection closed — a failed request.
                        let Some(target) = target else { return };
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            }
        });
        let probe = tokio::spawn({
            let backends = backends.clone();
            async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(500))
                    .build()
                    .unwrap();
                loop {
                    let addresses: Vec<SocketAddr> = backends
                        .lock()
                        .unwrap()
                        .list
                        .iter()
                        .map(|(address, _)| *address)
                        .collect();
                    for address in addresses {
                        let ready = client
                            .get(format!("http://{address}/readyz"))
                            .send()
                            .await
                            .is_ok_and(|response| response.status() == 200);
                        let mut backends = backends.lock().unwrap();
                        if let Some(entry) = backends.list.iter_mut().find(|(a, _)| *a == address) {
                            entry.1 = ready;
                        }
                    }
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            }
        });
        Self {
            address,
            backends,
            tasks: vec![accept, probe],
        }
    }

    /// A new endpoint, not ready until its first successful probe.
    fn add(&self, app: &TestApp) {
        self.backends
            .lock()
            .unwrap()
            .list
            .push((instance_address(app), false));
    }

    /// The pod is gone: its endpoint leaves.
    fn remove(&self, address: SocketAddr) {
        self.backends
            .lock()
            .unwrap()
            .list
            .retain(|(a, _)| *a != address);
    }

    fn is_ready(&self, address: SocketAddr) -> bool {
        self.backends
            .lock()
            .unwrap()
            .list
            .iter()
            .any(|(a, ready)| *a == address && *ready)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn instance_address(app: &TestApp) -> SocketAddr {
    app.address
        .trim_start_matches("http://")
        .parse()
        .expect("an instance's address")
}

#[derive(Default)]
struct Tally {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the assertion message.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<u16, String>, what: &str) {
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            outcome => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = self.failures.lock().unwrap();
                if failures.len() < 10 {
                    failures.push(format!("{what}: {outcome:?}"));
                }
            }
        }
    }
}

/// One client of the clinic: reads a patient, sometimes edits it or registers a new one,
/// through the balancer with a keep-alive connection pool, until `stop`.
async fn client_loop(
    worker: u32,
    client: reqwest::Client,
    base: String,
    patient: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (what, request) = match n % 10 {
            0 => (
                "POST",
                client
                    .post(format!("{base}/api/v1/patients"))
                    .json(&patient_body(100_000 + worker * 10_000 + n)),
            ),
            5 => (
                "PATCH",
                client
                    .patch(format!("{base}/api/v1/patients/{patient}"))
                    .json(&json!({"email": format!("w{worker}n{n}@example.org")})),
            ),
            _ => (
                "GET",
                client.get(format!("{base}/api/v1/patients/{patient}")),
            ),
        };
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the whole body: a connection cut mid-answer is a failure too.
                match response.bytes().await {
                    Ok(_) if (200..300).contains(&status) => Ok(status),
                    Ok(body) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    Err(error) => Err(format!("body: {error}")),
                }
            }
            Err(error) => Err(format!("{error:?}")),
        };
        tally.record(outcome, what);
    }
}

#[tokio::test]
async fn a_rolling_restart_of_three_instances_under_load_fails_no_request() {
    let drain = |settings: &mut medflow::config::Settings| {
        settings.http.drain_delay_ms = DRAIN_DELAY_MS;
    };
    let first = spawn_app_with(drain).await;
    let (db_name, db_url) = (first.db_name.clone(), first.db_url.clone());
    let mut instances = vec![first];
    for _ in 0..2 {
        instances.push(spawn_app_on(db_name.clone(), db_url.clone(), drain).await);
    }
    let balancer = Balancer::start().await;
    for app in &instances {
        balancer.add(app);
    }
    let every_ready = |apps: &[TestApp]| {
        apps.iter()
            .all(|app| balancer.is_ready(instance_address(app)))
    };
    eventually(
        Duration::from_secs(10),
        "the balancer to see three ready instances",
        || {
            let ready = every_ready(&instances);
            async move { ready.then_some(()) }
        },
    )
    .await;

    let patient = instances[0].create_patient(&patient_body(1)).await;
    let patient = patient["id"].as_str().unwrap().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let headers = instances[0].client.clone();
    let base = format!("http://{}", balancer.address);
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            tokio::spawn(client_loop(
                worker,
                headers.clone(),
                base.clone(),
                patient.clone(),
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    let served_at_least = |count: u64| {
        let tally = tally.clone();
        async move {
            let target = tally.succeeded.load(Ordering::Relaxed) + count;
            eventually(Duration::from_secs(30), "the load to go on", || {
                let tally = tally.clone();
                async move { (tally.succeeded.load(Ordering::Relaxed) >= target).then_some(()) }
            })
            .await;
        }
    };
    served_at_least(200).await;

    for round in 0..3 {
        // maxSurge 1: the successor starts and becomes ready first.
        let successor = spawn_app_on(db_name.clone(), db_url.clone(), drain).await;
        balancer.add(&successor);
        eventually(Duration::from_secs(10), "the successor to be ready", || {
            let ready = balancer.is_ready(instance_address(&successor));
            async move { ready.then_some(()) }
        })
        .await;
        instances.push(successor);

        // SIGTERM to the oldest.
        let old = instances.remove(0);
        let old_address = instance_address(&old);
        let probe = old.anonymous.clone();
        let direct = old.client.clone();
        let old_url = old.address.clone();
        let terminated = tokio::spawn(old.terminate());
        // It turns unready at once, yet keeps answering while the balancer catches up —
        // asking keep-alive clients to reconnect.
        eventually(Duration::from_secs(2), "/readyz to answer 503", || {
            let probe = probe.clone();
            let url = format!("{old_url}/readyz");
            async move {
                let response = probe.get(url).send().await.ok()?;
                (response.status() == 503).then_some(())
            }
        })
        .await;
        let response = direct
            .get(format!("{old_url}/api/v1/patients/{patient}"))
            .send()
            .await
            .expect("a draining instance still serves");
        assert_eq!(response.status(), 200, "round {round}");
        assert_eq!(
            response.headers()["connection"],
            "close",
            "a draining instance closes keep-alive connections after answering"
        );
        tokio::time::timeout(Duration::from_secs(20), terminated)
            .await
            .expect("the instance stops within its shutdown budget")
            .unwrap();
        balancer.remove(old_address);
        served_at_least(200).await;
    }

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let failed = tally.failed.load(Ordering::Relaxed);
    let succeeded = tally.succeeded.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rollout: {:?}",
        failed + succeeded,
        tally.failures.lock().unwrap()
    );
    assert!(succeeded >= 800, "{succeeded} requests");
    for app in instances {
        app.shutdown().await;
    }
}

#[test]
fn the_balancer_picks_only_ready_backends_in_turn() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
    let mut backends = Backends {
        list: vec![(a, true), (b, false), (c, true)],
        next: 0,
    };
    let picks: Vec<_> = (0..4).map(|_| backends.pick().unwrap()).collect();
    assert_eq!(picks, [c, a, c, a]);
    backends.list.iter_mut().for_each(|entry| entry.1 = false);
    assert_eq!(backends.pick(), None);
}
