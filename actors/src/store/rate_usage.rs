//! The shared request counts behind the cluster-wide HTTP rate limit (`http_rate_usage`).

use super::{PgStore, StoreResult};

/// A client of the rate limit: a 16-byte digest of its key (the column's length).
pub type RateClient = [u8; 16];

/// Requests of one client in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateUsage {
    pub client: RateClient,
    pub window: i64,
    pub requests: i64,
}

impl PgStore {
    /// Adds `added` to the shared counts and returns the cluster totals, from window `since`
    /// on, of every client in `refresh` (a row may come twice; the larger count is current).
    pub async fn sync_rate_usage(
        &self,
        added: &[RateUsage],
        refresh: &[RateClient],
        since: i64,
    ) -> StoreResult<Vec<RateUsage>> {
        let clients: Vec<&[u8]> = added.iter().map(|usage| usage.client.as_slice()).collect();
        let refresh: Vec<&[u8]> = refresh.iter().map(|client| client.as_slice()).collect();
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
        // The table's CHECK keeps every client at 16 bytes.
        Ok(rows
            .iter()
            .filter_map(|row| {
                Some(RateUsage {
                    client: row.get::<_, &[u8]>(0).try_into().ok()?,
                    window: row.get(1),
                    requests: row.get(2),
                })
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
