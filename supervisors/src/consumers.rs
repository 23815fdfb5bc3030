//! `ConsumerSupervisor`: keeps every consumer group running, each on its own.
//!
//! ```text
//! ConsumerSupervisor        restarts a failed consumer after a backoff (doubling, capped);
//! ├─ ConsumerActor(search)  one child's failure never stops or delays another; never
//! └─ ConsumerActor(registry) escalates: a broker outage delays consumption, it does not stop
//!                           medflow
//! ```
//!
//! A restarted consumer rejoins its group and resumes from the committed offsets.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use medflow_actors::consume::{ConsumerActor, Consumers};
use medflow_actors::internal_events::{ConsumerRestarting, emit};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

#[derive(Debug)]
pub enum ConsumerSupervisorMessage {
    /// (Re)spawns child `i`.
    Spawn(usize),
}

#[derive(Clone)]
pub struct ConsumerSupervisor {
    pub children: Vec<ConsumerActor>,
    pub consumers: Consumers,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl std::fmt::Debug for ConsumerSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSupervisor")
            .field(
                "groups",
                &self
                    .children
                    .iter()
                    .map(|child| child.spec.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
pub struct ConsumerSupervisorState {
    running: HashMap<ActorId, (usize, ActorCell)>,
    restarts: Vec<crate::policy::RestartTracker>,
    stopping: bool,
}

impl Actor for ConsumerSupervisor {
    type Msg = ConsumerSupervisorMessage;
    type State = ConsumerSupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerSupervisorMessage>,
        _: (),
    ) -> Result<ConsumerSupervisorState, ActorProcessingErr> {
        for (index, child) in self.children.iter().enumerate() {
            self.consumers.register(child.stats.clone());
            myself.send_message(ConsumerSupervisorMessage::Spawn(index))?;
        }
        Ok(ConsumerSupervisorState {
            restarts: vec![crate::policy::RestartTracker::default(); self.children.len()],
            ..Default::default()
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConsumerSupervisorMessage>,
        state: &mut ConsumerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        // Consumers finish their batch and commit; in parallel, each bounded.
        let stops = state.running.drain().map(|(_, (_, cell))| async move {
            let _ = cell
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(15)))
                .await;
        });
        futures::future::join_all(stops).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerSupervisorMessage>,
        message: ConsumerSupervisorMessage,
        state: &mut ConsumerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let ConsumerSupervisorMessage::Spawn(index) = message;
        if state.stopping {
            return Ok(());
        }
        let child = self.children[index].clone();
        let name = child.spec.name.clone();
        match Actor::spawn_linked(None, child, (), myself.get_cell()).await {
            Ok((actor, _)) => {
                let cell = actor.get_cell();
                self.consumers.set_actor(&name, Some(cell.clone()));
                state.restarts[index].started(Instant::now());
                state.running.insert(cell.get_id(), (index, cell));
            }
            Err(error) => self.restart_later(&myself, state, index, error.to_string()),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ConsumerSupervisorMessage>,
        event: SupervisionEvent,
        state: &mut ConsumerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = crate::policy::child_exit(event) else {
            return Ok(());
        };
        let Some((index, _)) = state.running.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.stopping {
            return Ok(());
        }
        let child = &self.children[index];
        child.stats.running.store(false, Ordering::Relaxed);
        self.consumers.set_actor(&child.spec.name, None);
        self.restart_later(&myself, state, index, reason);
        Ok(())
    }
}

impl ConsumerSupervisor {
    fn restart_later(
        &self,
        myself: &ActorRef<ConsumerSupervisorMessage>,
        state: &mut ConsumerSupervisorState,
        index: usize,
        reason: String,
    ) {
        let delay = crate::policy::restart_delay(
            &mut state.restarts[index],
            self.backoff_initial,
            self.backoff_max,
        );
        let child = &self.children[index];
        child.stats.restarts.fetch_add(1, Ordering::Relaxed);
        child.stats.set_error(Some(reason.clone()));
        emit(ConsumerRestarting {
            group: &child.stats.topics.group_id,
            child: &child.spec.name,
            reason: &reason,
            delay,
        });
        myself.send_after(delay, move || ConsumerSupervisorMessage::Spawn(index));
    }
}
