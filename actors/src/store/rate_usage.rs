//! The shared request counts behind the cluster-wide HTTP rate limit (`http_rate_usage`).

use super::{PgStore, StoreResult};

/// Requests of one client (a 16-byte digest of its key) in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateUsage {
    pub client: Vec<u8>,
    pub window: i64,
    pub requests: i64,
}

impl PgStore {
    /// Adds `added` to the shared counts and returns the cluster totals, from window `since`
    /// on, of every client in `refresh` (a row may come twice; the larger count is current).
    pub async fn sync_rate_usage(
        &self,
        added: &[RateUsage],
        refresh: &[Vec<u8>],
        since: i64,
    ) -> StoreResult<Vec<RateUsage>> {
        let clients: Vec<&[u8]> = added.iter().map(|usage| usage.client.as_slice()).collect();
        let windows: Vec<i64> = added.iter().map(|usage| usage.window).collect();
        let requests: Vec<i64> = added.iter().map(|usage| usage.requests).collect();
        let client = self.housekeeping_client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/rate_usage_sync.sql"))
            .await?;
        let rows = client
            .query(
                &statement,
                &[&clients, &windows, &requests, &refresh, &since],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| RateUsage {
                client: row.get(0),
                window: row.get(1),
                requests: row.get(2),
            })
            .collect())
    }

    /// Forgets the counts of windows before `window`.
    pub async fn prune_rate_usage(&self, window: i64) -> StoreResult<u64> {
        let client = self.housekeeping_client().await?;
        let statement = client
            .prepare_cached(include_str!("sql/rate_usage_prune.sql"))
            .await?;
        Ok(client.execute(&statement, &[&window]).await?)
    }
}
