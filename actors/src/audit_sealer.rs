//! `AuditSealer`: seals committed audit rows into the Merkle tree, shortly after commit.
//!
//! Every instance runs one; a round that finds another instance sealing skips (see
//! [`crate::store::audit_seal`]), so the tree has one writer at a time and still seals
//! while any instance is up. Rounds follow each other at once while rows wait, and every
//! `interval` otherwise. A failed round (PostgreSQL restarting, a standby not promoted yet,
//! a role without the REPLICATION attribute) is logged and retried with a doubling backoff:
//! sealing is delayed, never lost, and the API is not affected — writes and reads never wait
//! for it. The sealing lag is published as a gauge every few seconds.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::backoff::doubling;
use crate::internal_events::{AuditTamperingSeen, SealRoundEnded, emit};
use crate::store::{PgStore, SealOutcome, SealSettings};

/// How often the sealing lag gauge is refreshed.
const LAG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AuditSealer {
    pub store: PgStore,
    pub settings: SealSettings,
    /// The pause between rounds when nothing waits.
    pub interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug)]
pub enum SealerMessage {
    Round,
}

pub struct SealerState {
    failures: u32,
    lag_checked: Option<Instant>,
}

impl Actor for AuditSealer {
    type Msg = SealerMessage;
    type State = SealerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SealerMessage>,
        _: (),
    ) -> Result<SealerState, ActorProcessingErr> {
        myself.send_message(SealerMessage::Round)?;
        Ok(SealerState {
            failures: 0,
            lag_checked: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SealerMessage>,
        SealerMessage::Round: SealerMessage,
        state: &mut SealerState,
    ) -> Result<(), ActorProcessingErr> {
        let next = match Box::pin(self.store.seal_audit(&self.settings)).await {
            Ok((outcome, tampering)) => {
                if state.failures > 0 {
                    tracing::info!(after_failures = state.failures, "audit sealing resumed");
                }
                state.failures = 0;
                for seen in tampering {
                    emit(AuditTamperingSeen {
                        operation: seen.operation,
                        entry: seen.audit_id,
                    });
                }
                let label = match outcome {
                    SealOutcome::Busy => "busy",
                    SealOutcome::Idle => "idle",
                    SealOutcome::Sealed { .. } => "sealed",
                };
                emit(SealRoundEnded {
                    outcome: label,
                    error: None,
                    failures: 0,
                    retry: Duration::ZERO,
                });
                match outcome {
                    SealOutcome::Sealed { more: true, .. } => Duration::ZERO,
                    _ => self.interval,
                }
            }
            Err(error) => {
                state.failures += 1;
                let delay = doubling(self.backoff_initial, self.backoff_max, state.failures);
                let error = match &error {
                    crate::store::StoreError::Unexpected(inner) => format!("{inner:#}"),
                    other => other.to_string(),
                };
                emit(SealRoundEnded {
                    outcome: "failed",
                    error: Some(&error),
                    failures: state.failures,
                    retry: delay,
                });
                delay
            }
        };
        if state
            .lag_checked
            .is_none_or(|checked| checked.elapsed() >= LAG_EVERY)
        {
            state.lag_checked = Some(Instant::now());
            if let Ok(lag) = self.store.audit_sealing_lag().await {
                metrics::gauge!("medflow_audit_sealing_lag_seconds").set(lag);
            }
        }
        if next.is_zero() {
            myself.send_message(SealerMessage::Round)?;
        } else {
            myself.send_after(next, || SealerMessage::Round);
        }
        Ok(())
    }
}
