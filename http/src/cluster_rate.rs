//! The cluster-wide half of the HTTP rate limit.
//!
//! An instance's token buckets see only the requests that reach it: behind a Service of N
//! pods a client would get up to N times its limit. So every instance also counts what it
//! admits per client in windows of `burst / per_second` seconds and, every
//! `http.rate_limit_sync_ms`, adds its counts to a shared table (`http_rate_usage`) and reads
//! back the cluster's totals of every client it saw meanwhile. A request is admitted while
//! the client's sliding-window estimate — this window's count plus the previous window's,
//! weighted by how much of it the sliding window still covers — leaves room for it within
//! `burst`: about `burst` requests per window, `per_second` on average, across the cluster.
//!
//! Between two syncs an instance does not see the others' new requests, so the cluster can
//! admit more than the limit by what reaches the other instances within one sync interval
//! (each instance's own buckets still bound that). If PostgreSQL cannot be reached, the
//! counts wait in memory and every instance enforces its own buckets only: a database outage
//! never refuses requests by itself. The table stores a 16-byte digest of each client's key,
//! never an address or a token subject.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use medflow_actors::internal_events::{RateLimitSyncFailed, RateLimitSyncRestored, emit};
use medflow_actors::store::{PgStore, RateClient, RateUsage, StoreError};
use sha2::{Digest, Sha256};

/// Rows of windows that no longer count are deleted this often (by every instance).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A client, as the shared table knows it: the first 16 bytes of the SHA-256 of its key.
pub type ClientDigest = RateClient;

/// The digest of a client key (`"sub:…"`, `"ip:…"`).
pub fn digest(key: &str) -> ClientDigest {
    let hash = Sha256::digest(key.as_bytes());
    let mut digest = [0; 16];
    digest.copy_from_slice(&hash[..16]);
    digest
}

/// Milliseconds since the Unix epoch: windows are numbered alike on every instance.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as i64)
        .unwrap_or(0)
}

/// This instance's view of every client's requests across the cluster. A request touches
/// only its client's entry (a sharded map: no lock shared by all requests).
#[derive(Debug)]
pub struct ClusterUsage {
    window_ms: i64,
    limit: i64,
    clients: DashMap<ClientDigest, ClientUsage>,
    /// Syncs that completed.
    syncs: AtomicU64,
}

/// One client's counts in the windows that still matter (the current and the previous).
#[derive(Debug, Default)]
struct ClientUsage {
    windows: Vec<WindowCount>,
    /// Asked since the last sync: its totals are read back at the next one.
    seen: bool,
}

#[derive(Debug, Clone, Copy)]
struct WindowCount {
    window: i64,
    /// The cluster's total as of the last sync (this instance's added requests included).
    known: i64,
    /// Admitted here and not yet added to the shared table.
    pending: i64,
}

impl ClientUsage {
    fn count(&self, window: i64) -> i64 {
        self.windows
            .iter()
            .find(|count| count.window == window)
            .map_or(0, |count| count.known + count.pending)
    }

    fn at(&mut self, window: i64) -> &mut WindowCount {
        let index = match self.windows.iter().position(|count| count.window == window) {
            Some(index) => index,
            None => {
                self.windows.push(WindowCount {
                    window,
                    known: 0,
                    pending: 0,
                });
                self.windows.len() - 1
            }
        };
        &mut self.windows[index]
    }

    /// Drops windows before `oldest`; true when nothing is left to remember.
    fn forget_before(&mut self, oldest: i64) -> bool {
        self.windows.retain(|count| count.window >= oldest);
        self.windows.is_empty() && !self.seen
    }
}

/// What one sync sends: the counts taken out of `pending` and the clients to read back.
#[derive(Debug, Default)]
pub struct SyncBatch {
    pub added: Vec<RateUsage>,
    pub refresh: Vec<ClientDigest>,
    /// The oldest window still counted (the previous one).
    pub since: i64,
}

impl ClusterUsage {
    /// `burst` requests per window of `burst / per_second` seconds (at least one second).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = i64::from(per_second.max(1));
        let limit = i64::from(burst).max(per_second);
        Self {
            window_ms: (limit * 1000 / per_second).max(1000),
            limit,
            clients: DashMap::new(),
            syncs: AtomicU64::new(0),
        }
    }

    fn window_of(&self, now: i64) -> i64 {
        now.div_euclid(self.window_ms)
    }

    /// Admits one request of `client` at `now` (Unix ms) unless the client's estimate is at
    /// the limit; then answers how long to wait.
    pub fn admit(&self, client: ClientDigest, now: i64) -> Result<(), Duration> {
        let window = self.window_of(now);
        let elapsed = now.rem_euclid(self.window_ms) as f64 / self.window_ms as f64;
        let mut usage = self.clients.entry(client).or_default();
        usage.seen = true;
        let current = usage.count(window) as f64;
        let previous = usage.count(window - 1) as f64;
        let limit = self.limit as f64;
        if current + previous * (1.0 - elapsed) + 1.0 <= limit {
            usage.at(window).pending += 1;
            return Ok(());
        }
        // When the previous window's weight will have shrunk enough, or else the next window.
        let until = if current + 1.0 <= limit && previous > 0.0 {
            1.0 - (limit - 1.0 - current) / previous
        } else {
            1.0
        };
        let wait_ms = ((until - elapsed).max(0.0) * self.window_ms as f64).ceil() as u64;
        Err(Duration::from_millis(wait_ms.max(1)))
    }

    /// Takes what the next sync sends, and forgets clients with nothing left that counts.
    pub fn take_batch(&self, now: i64) -> SyncBatch {
        let oldest = self.window_of(now) - 1;
        let mut batch = SyncBatch {
            since: oldest,
            ..SyncBatch::default()
        };
        self.clients.retain(|client, usage| {
            for count in usage.windows.iter_mut() {
                if count.pending > 0 && count.window >= oldest {
                    batch.added.push(RateUsage {
                        client: *client,
                        window: count.window,
                        requests: count.pending,
                    });
                    // Counted as known until the sync's answer replaces it.
                    count.known += count.pending;
                }
                count.pending = 0;
            }
            if std::mem::take(&mut usage.seen) {
                batch.refresh.push(*client);
            }
            !usage.forget_before(oldest)
        });
        batch
    }

    /// Takes the cluster's totals a sync read back.
    pub fn merge(&self, totals: Vec<RateUsage>, now: i64) {
        let oldest = self.window_of(now) - 1;
        for total in totals {
            if total.window < oldest {
                continue;
            }
            let mut usage = self.clients.entry(total.client).or_default();
            let count = usage.at(total.window);
            count.known = count.known.max(total.requests);
        }
    }

    /// Puts back what a failed sync took, to be sent by the next one.
    pub fn restore(&self, batch: SyncBatch, now: i64) {
        let oldest = self.window_of(now) - 1;
        for added in batch.added {
            let mut usage = self.clients.entry(added.client).or_default();
            let count = usage.at(added.window);
            count.known -= added.requests;
            count.pending += added.requests;
        }
        for client in batch.refresh {
            self.clients.entry(client).or_default().seen = true;
        }
        self.clients.retain(|_, usage| !usage.forget_before(oldest));
    }

    /// Sends this instance's counts and reads back the cluster's; on failure the counts are
    /// kept for the next round.
    pub async fn sync(&self, store: &PgStore) -> Result<(), StoreError> {
        let batch = self.take_batch(now_ms());
        if batch.added.is_empty() && batch.refresh.is_empty() {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match store
            .sync_rate_usage(&batch.added, &batch.refresh, batch.since)
            .await
        {
            Ok(totals) => {
                self.merge(totals, now_ms());
                self.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.restore(batch, now_ms());
                Err(error)
            }
        }
    }

    /// Syncs that completed (a test waits for one).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Shares the counts every `interval` until the task is aborted; a failed round is logged
    /// once per streak and its counts go with the next round. Deletes rows of windows that no
    /// longer count every minute.
    pub async fn share(self: Arc<Self>, store: PgStore, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut pruned = tokio::time::Instant::now();
        loop {
            ticker.tick().await;
            match self.sync(&store).await {
                Ok(()) if failing => {
                    failing = false;
                    emit(RateLimitSyncRestored);
                }
                Ok(()) => {}
                Err(error) => {
                    emit(RateLimitSyncFailed {
                        error: &error.to_string(),
                        first: !failing,
                    });
                    failing = true;
                }
            }
            if !failing && pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                let oldest = self.window_of(now_ms()) - 1;
                if let Err(error) = store.prune_rate_usage(oldest).await {
                    tracing::debug!(%error, "cannot delete old rate-limit counts; next minute");
                }
            }
        }
    }

    /// Clients with counts held in memory.
    pub fn tracked_clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 requests per 10-second window (1 per second, burst 10).
    fn usage() -> ClusterUsage {
        ClusterUsage::new(1, 10)
    }

    const START: i64 = 1_000_000_000_000; // at a window's start (a multiple of 10 s)

    #[test]
    fn a_client_is_admitted_up_to_the_limit_within_a_window() {
        let usage = usage();
        let client = digest("sub:a");
        for n in 0..10 {
            assert_eq!(usage.admit(client, START + n), Ok(()), "request {n}");
        }
        let wait = usage.admit(client, START + 10).unwrap_err();
        assert!(wait > Duration::from_secs(9), "{wait:?}");
        // Another client has its own count.
        assert_eq!(usage.admit(digest("sub:b"), START + 10), Ok(()));
    }

    #[test]
    fn requests_admitted_by_other_instances_count_once_a_sync_brings_them() {
        let (here, there) = (usage(), usage());
        let client = digest("ip:192.0.2.1");
        for n in 0..7 {
            there.admit(client, START + n).unwrap();
        }
        here.admit(client, START).unwrap();
        // The shared table after both synced: 7 + 1.
        let table = vec![RateUsage {
            client,
            window: START / 10_000,
            requests: 8,
        }];
        let batch = here.take_batch(START + 100);
        assert_eq!(batch.added.len(), 1);
        assert_eq!(batch.refresh, vec![client]);
        here.merge(table, START + 100);
        assert_eq!(here.admit(client, START + 200), Ok(()));
        assert_eq!(here.admit(client, START + 300), Ok(()));
        assert!(
            here.admit(client, START + 400).is_err(),
            "8 + 2 = the limit"
        );
    }

    #[test]
    fn the_previous_window_weighs_less_as_the_sliding_window_leaves_it() {
        let usage = usage();
        let client = digest("sub:a");
        for n in 0..10 {
            usage.admit(client, START + n).unwrap();
        }
        // Just after the window: the previous 10 still weigh almost fully.
        assert!(usage.admit(client, START + 10_001).is_err());
        // Halfway through the next window they weigh 5: five more fit.
        for n in 0..5 {
            assert_eq!(usage.admit(client, START + 15_000 + n), Ok(()), "{n}");
        }
        let wait = usage.admit(client, START + 15_010).unwrap_err();
        assert!(wait <= Duration::from_secs(5), "{wait:?}");
    }

    #[test]
    fn counts_on_their_way_to_the_table_still_count() {
        let usage = usage();
        let client = digest("sub:a");
        for n in 0..10 {
            usage.admit(client, START + n).unwrap();
        }
        let _in_flight = usage.take_batch(START + 20);
        assert!(usage.admit(client, START + 30).is_err());
    }

    #[test]
    fn a_failed_sync_keeps_its_counts_for_the_next_one() {
        let usage = usage();
        let client = digest("sub:a");
        for n in 0..3 {
            usage.admit(client, START + n).unwrap();
        }
        let batch = usage.take_batch(START + 10);
        assert_eq!(batch.added[0].requests, 3);
        usage.restore(batch, START + 20);
        // Still counted while waiting, and sent again.
        for n in 0..7 {
            usage.admit(client, START + 30 + n).unwrap();
        }
        assert!(usage.admit(client, START + 40).is_err());
        let batch = usage.take_batch(START + 50);
        assert_eq!(batch.added[0].requests, 10);
        assert_eq!(batch.refresh.len(), 1);
        // Counts of windows that no longer matter are forgotten; the client is still read
        // back, then forgotten once nothing of it counts.
        usage.restore(batch, START + 30_000);
        let batch = usage.take_batch(START + 30_010);
        assert!(batch.added.is_empty());
        assert_eq!(batch.refresh.len(), 1);
        assert_eq!(usage.tracked_clients(), 0);
    }
}
