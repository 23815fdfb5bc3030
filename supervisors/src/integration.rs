//! `IntegrationSupervisor`: runs the change-data-capture pipeline and restarts it.
//!
//! ```text
//! IntegrationSupervisor          spawns downstream first; on any child's failure stops the
//! ├─ KafkaProducer               whole pipeline and respawns it after a backoff (doubling,
//! └─ CdcReader ─▶ KafkaProducer  capped), counting generations; never escalates: a broker
//!                                or database outage delays events, it does not stop medflow
//! ```
//!
//! Its restarts are tracked like every supervisor's child ([`RestartTracker`](crate::policy::RestartTracker),
//! without a budget): the backoff starts over only once a pipeline ran
//! [`STABLE_AFTER`](crate::policy::STABLE_AFTER) before failing, so one failing right after
//! each start is restarted ever more slowly, up to the cap.
//!
//! The reader resumes at the slot's confirmed LSN, so a restart re-publishes at most what was
//! not yet acknowledged (at-least-once). When another process streams from the slot, this
//! one reports `standby` and keeps trying to take over.

use std::time::Duration;

use medflow_actors::bus::KafkaSettings;
use medflow_actors::bus::producer::KafkaProducer;
use medflow_actors::cdc::reader::{CdcReader, CdcSettings};
use medflow_actors::cdc::{CdcState, CdcStatusCell};
use medflow_actors::internal_events::{CdcPipelineRestarting, emit};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

#[derive(Debug)]
pub enum IntegrationMessage {
    /// Spawns the pipeline (at start and after a backoff).
    Spawn,
}

/// The CDC pipeline's name in `medflow_supervisor_restarts_total{child}`.
pub const CHILD_NAME: &str = "cdc-pipeline";

#[derive(Debug, Clone)]
pub struct IntegrationSupervisor {
    pub cdc: CdcSettings,
    pub kafka: KafkaSettings,
    pub status: CdcStatusCell,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

pub struct IntegrationState {
    producer: Option<ActorCell>,
    reader: Option<ActorCell>,
    restarts: crate::policy::RestartTracker,
    generation: u64,
}

impl Actor for IntegrationSupervisor {
    type Msg = IntegrationMessage;
    type State = IntegrationState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<IntegrationMessage>,
        _: (),
    ) -> Result<IntegrationState, ActorProcessingErr> {
        myself.send_message(IntegrationMessage::Spawn)?;
        Ok(IntegrationState {
            producer: None,
            reader: None,
            restarts: crate::policy::RestartTracker::default(),
            generation: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<IntegrationMessage>,
        state: &mut IntegrationState,
    ) -> Result<(), ActorProcessingErr> {
        // Upstream first and gracefully: the reader ends its stream (its post_stop runs), then
        // the producer flushes. Children still running afterwards are killed by ractor.
        for child in [state.reader.take(), state.producer.take()]
            .into_iter()
            .flatten()
        {
            let _ = child
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
                .await;
        }
        self.status
            .update(|status| status.state = CdcState::Stopped);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<IntegrationMessage>,
        message: IntegrationMessage,
        state: &mut IntegrationState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            IntegrationMessage::Spawn => {
                if let Err(error) = self.spawn_pipeline(&myself, state).await {
                    self.restart_later(&myself, state, error.to_string());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<IntegrationMessage>,
        event: SupervisionEvent,
        state: &mut IntegrationState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = crate::policy::child_exit(event) else {
            return Ok(());
        };
        let ours = [&state.producer, &state.reader]
            .iter()
            .any(|child| child.as_ref().is_some_and(|c| c.get_id() == cell.get_id()));
        if !ours {
            return Ok(());
        }
        self.restart_later(&myself, state, reason);
        Ok(())
    }
}

impl IntegrationSupervisor {
    async fn spawn_pipeline(
        &self,
        myself: &ActorRef<IntegrationMessage>,
        state: &mut IntegrationState,
    ) -> Result<(), ActorProcessingErr> {
        state.generation += 1;
        let (producer, _) = Actor::spawn_linked(
            None,
            KafkaProducer {
                settings: self.kafka.clone(),
            },
            (),
            myself.get_cell(),
        )
        .await?;
        state.producer = Some(producer.get_cell());
        let reader = CdcReader {
            settings: self.cdc.clone(),
            kafka: self.kafka.clone(),
            producer,
            status: self.status.clone(),
        };
        let (reader, _) = Actor::spawn_linked(None, reader, (), myself.get_cell()).await?;
        state.reader = Some(reader.get_cell());
        state.restarts.started(std::time::Instant::now());
        tracing::info!(generation = state.generation, slot = %self.cdc.slot, "cdc pipeline started");
        Ok(())
    }

    /// Stops what is left of the pipeline and schedules a respawn after the backoff.
    fn restart_later(
        &self,
        myself: &ActorRef<IntegrationMessage>,
        state: &mut IntegrationState,
        reason: String,
    ) {
        for child in [state.reader.take(), state.producer.take()]
            .into_iter()
            .flatten()
        {
            child.stop(Some("pipeline restart".into()));
        }
        let delay = crate::policy::restart_delay(
            &mut state.restarts,
            self.backoff_initial,
            self.backoff_max,
        );
        // PostgreSQL refuses a second reader of an active slot: that is a standby, not a fault.
        let standby = medflow_actors::cdc::slot_in_use(&reason);
        self.status.update(|status| {
            status.state = if standby {
                CdcState::Standby
            } else {
                CdcState::Restarting
            };
            status.restarts += 1;
            status.last_error = Some(reason.clone());
            if !standby {
                status.failed_at = Some(std::time::Instant::now());
            }
        });
        emit(CdcPipelineRestarting {
            child: CHILD_NAME,
            slot: &self.cdc.slot,
            standby,
            reason: &reason,
            delay,
        });
        myself.send_after(delay, || IntegrationMessage::Spawn);
    }
}
