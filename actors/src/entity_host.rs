//! `EntityHost`: spawns one entity actor per id on demand, hands out its reference, and
//! stops it after it was idle for the configured time, so memory is bounded by the live
//! working set rather than by the table size.
//!
//! ```text
//! EntityHost<PatientActor>
//! ├─ PatientActor(id₁)   spawned on the first Lookup of id₁
//! ├─ PatientActor(id₂)   drained and stopped after `idle_timeout` without a Lookup
//! └─ …                   a crashed child is forgotten; the next Lookup respawns it and it
//!                        reloads from PostgreSQL, after a backoff that grows per crash
//! ```
//!
//! Every access goes through `Lookup`, which records the access time, so the sweep never
//! stops an actor a caller has just been handed (callers' timeouts are far shorter than the
//! idle timeout). A stopped actor's queued messages are processed first (`drain`), and a send
//! that finds it stopped is retried by [`EntityClient`] through a fresh `Lookup`.
//!
//! An entity that crashes `max_restarts` times within `restart_window` is quarantined until
//! the window ends: its lookups answer `Unavailable` with a retry time, and no other entity
//! is affected.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, MessagingErr, RpcReplyPort,
    SupervisionEvent,
};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::internal_events::{EntityActorCrashed, EntityActorsPassivated, emit};

// Tokio's clock, not the system's: the host's timing is tested with paused time.
use tokio::time::Instant;

/// An actor that owns one entity, spawned with the entity's id.
pub trait EntityActor: Actor<Arguments = Uuid> + Clone + Sync {
    /// The entity kind, for logs, metrics and error messages (`"patient"`).
    const KIND: &'static str;
}

/// Passivation and crash-restart policy of one host.
#[derive(Debug, Clone)]
pub struct EntityHostSettings {
    /// An entity actor with no access for this long is stopped.
    pub idle_timeout: Duration,
    /// How often idle actors are looked for.
    pub sweep_interval: Duration,
    /// Crashes of one entity tolerated within `restart_window` before it is quarantined.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Wait before respawning a crashed entity: doubles per crash, capped.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Messages of a host of actors with message type `M`.
pub enum EntityHostMessage<M: ractor::Message> {
    /// Returns the live actor of `id`, spawning it if needed.
    Lookup {
        id: Uuid,
        reply: RpcReplyPort<Result<ActorRef<M>>>,
    },
    Stats {
        reply: RpcReplyPort<EntityHostStats>,
    },
    /// Stops actors idle longer than the idle timeout (sent by the host's own timer).
    Sweep,
}

impl<M: ractor::Message> std::fmt::Debug for EntityHostMessage<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lookup { id, .. } => f.debug_struct("Lookup").field("id", id).finish(),
            Self::Stats { .. } => f.write_str("Stats"),
            Self::Sweep => f.write_str("Sweep"),
        }
    }
}

/// Counts a host reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntityHostStats {
    pub live: usize,
    pub quarantined: usize,
    pub passivated_total: u64,
    pub restarts_total: u64,
}

/// The host actor's configuration: the factory of entity actors and the policy.
#[derive(Debug, Clone)]
pub struct EntityHost<A: EntityActor> {
    pub factory: A,
    pub settings: EntityHostSettings,
}

struct LiveEntry<M: ractor::Message> {
    actor: ActorRef<M>,
    last_access: Instant,
}

struct CrashRecord {
    window_start: Instant,
    crashes: u32,
    respawn_not_before: Instant,
}

pub struct EntityHostState<M: ractor::Message> {
    live: HashMap<Uuid, LiveEntry<M>>,
    ids_by_actor: HashMap<ActorId, Uuid>,
    crashes: HashMap<Uuid, CrashRecord>,
    sweeper: Option<JoinHandle<()>>,
    passivated_total: u64,
    restarts_total: u64,
}

impl<A: EntityActor> Actor for EntityHost<A> {
    type Msg = EntityHostMessage<A::Msg>;
    type State = EntityHostState<A::Msg>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let sweeper =
            myself.send_interval(self.settings.sweep_interval, || EntityHostMessage::Sweep);
        tracing::info!(
            kind = A::KIND,
            idle_timeout_ms = self.settings.idle_timeout.as_millis() as u64,
            "entity host started"
        );
        Ok(EntityHostState {
            live: HashMap::new(),
            ids_by_actor: HashMap::new(),
            crashes: HashMap::new(),
            sweeper: Some(sweeper),
            passivated_total: 0,
            restarts_total: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(sweeper) = state.sweeper.take() {
            sweeper.abort();
        }
        metrics::gauge!("medflow_entity_actors_live", "kind" => A::KIND).set(0.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EntityHostMessage::Lookup { id, reply } => {
                let answer = self.lookup(&myself, state, id).await;
                let _ = reply.send(answer);
            }
            EntityHostMessage::Stats { reply } => {
                let _ = reply.send(EntityHostStats {
                    live: state.live.len(),
                    quarantined: state
                        .crashes
                        .values()
                        .filter(|c| c.respawn_not_before > Instant::now())
                        .count(),
                    passivated_total: state.passivated_total,
                    restarts_total: state.restarts_total,
                });
            }
            EntityHostMessage::Sweep => self.sweep(state),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(id) = state.forget(cell.get_id()) {
                    state.restarts_total += 1;
                    let record = self.record_crash(state, id);
                    emit(EntityActorCrashed {
                        kind: A::KIND,
                        entity_id: id,
                        crashes: record,
                        error: &error.to_string(),
                    });
                }
            }
            _ => {}
        }
        metrics::gauge!("medflow_entity_actors_live", "kind" => A::KIND)
            .set(state.live.len() as f64);
        Ok(())
    }
}

impl<M: ractor::Message> EntityHostState<M> {
    /// Removes the entry of a stopped actor (if it is still the current one for its id).
    fn forget(&mut self, actor: ActorId) -> Option<Uuid> {
        let id = self.ids_by_actor.remove(&actor)?;
        if self
            .live
            .get(&id)
            .is_some_and(|entry| entry.actor.get_id() == actor)
        {
            self.live.remove(&id);
        }
        Some(id)
    }
}

impl<A: EntityActor> EntityHost<A> {
    async fn lookup(
        &self,
        myself: &ActorRef<EntityHostMessage<A::Msg>>,
        state: &mut EntityHostState<A::Msg>,
        id: Uuid,
    ) -> Result<ActorRef<A::Msg>> {
        let now = Instant::now();
        if let Some(entry) = state.live.get_mut(&id) {
            // A killed actor's termination event may still be on its way: replace it now
            // (the event later only cleans up its bookkeeping).
            if matches!(
                entry.actor.get_status(),
                ActorStatus::Running | ActorStatus::Starting | ActorStatus::Unstarted
            ) {
                entry.last_access = now;
                return Ok(entry.actor.clone());
            }
            state.live.remove(&id);
        }
        if let Some(record) = state.crashes.get(&id)
            && record.respawn_not_before > now
        {
            return Err(Error::Unavailable {
                message: format!("the {} is recovering from repeated failures", A::KIND),
                retry_after: Some(record.respawn_not_before - now),
            });
        }
        let (actor, _) = Actor::spawn_linked(None, self.factory.clone(), id, myself.get_cell())
            .await
            .map_err(|error| Error::Internal(format!("cannot spawn {} actor: {error}", A::KIND)))?;
        state.ids_by_actor.insert(actor.get_id(), id);
        state.live.insert(
            id,
            LiveEntry {
                actor: actor.clone(),
                last_access: now,
            },
        );
        metrics::gauge!("medflow_entity_actors_live", "kind" => A::KIND)
            .set(state.live.len() as f64);
        Ok(actor)
    }

    fn sweep(&self, state: &mut EntityHostState<A::Msg>) {
        let now = Instant::now();
        let idle_timeout = self.settings.idle_timeout;
        let mut passivated = 0u64;
        for entry in state.live.values() {
            if now.duration_since(entry.last_access) >= idle_timeout {
                // Drain: what is already queued is answered, later sends fail and are retried
                // through a fresh lookup. The entry goes when the termination event arrives.
                let _ = entry.actor.get_cell().drain();
                passivated += 1;
            }
        }
        // Forget passivated entries now so a lookup spawns afresh instead of returning an
        // actor that is draining.
        state
            .live
            .retain(|_, entry| now.duration_since(entry.last_access) < idle_timeout);
        state.crashes.retain(|_, record| {
            now.duration_since(record.window_start) < self.settings.restart_window
        });
        if passivated > 0 {
            state.passivated_total += passivated;
            emit(EntityActorsPassivated {
                kind: A::KIND,
                count: passivated,
                live: state.live.len(),
            });
        }
        metrics::gauge!("medflow_entity_actors_live", "kind" => A::KIND)
            .set(state.live.len() as f64);
    }

    /// Counts a crash of `id` and sets when it may respawn; returns the crash count.
    fn record_crash(&self, state: &mut EntityHostState<A::Msg>, id: Uuid) -> u32 {
        let settings = &self.settings;
        let now = Instant::now();
        let record = state.crashes.entry(id).or_insert(CrashRecord {
            window_start: now,
            crashes: 0,
            respawn_not_before: now,
        });
        if now.duration_since(record.window_start) >= settings.restart_window {
            *record = CrashRecord {
                window_start: now,
                crashes: 0,
                respawn_not_before: now,
            };
        }
        record.crashes += 1;
        record.respawn_not_before = if record.crashes > settings.max_restarts {
            record.window_start + settings.restart_window
        } else {
            now + crate::backoff::doubling(
                settings.backoff_initial,
                settings.backoff_max,
                record.crashes,
            )
        };
        record.crashes
    }
}

/// The current host actor of one kind; its supervisor replaces it after a restart.
pub struct EntityHostSlot<M: ractor::Message>(Arc<RwLock<Option<ActorRef<EntityHostMessage<M>>>>>);

impl<M: ractor::Message> Clone for EntityHostSlot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: ractor::Message> std::fmt::Debug for EntityHostSlot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let filled = self.0.read().map(|slot| slot.is_some()).unwrap_or(false);
        f.debug_struct("EntityHostSlot")
            .field("filled", &filled)
            .finish()
    }
}

impl<M: ractor::Message> Default for EntityHostSlot<M> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }
}

impl<M: ractor::Message> EntityHostSlot<M> {
    pub fn set(&self, host: Option<ActorRef<EntityHostMessage<M>>>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = host;
    }

    pub fn get(&self) -> Result<ActorRef<EntityHostMessage<M>>> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| Error::unavailable("the entity host is restarting"))
    }
}

/// Sends requests to entity actors through their host, with a timeout per call.
pub struct EntityClient<A: EntityActor> {
    slot: EntityHostSlot<A::Msg>,
    call_timeout: Duration,
}

impl<A: EntityActor> Clone for EntityClient<A> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            call_timeout: self.call_timeout,
        }
    }
}

/// Whether a request may be sent again after its actor died while holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: resending cannot change anything.
    Idempotent,
    /// Writes: resend only if the first attempt was never delivered.
    OnlyIfUndelivered,
}

impl<A: EntityActor> EntityClient<A> {
    pub fn new(slot: EntityHostSlot<A::Msg>, call_timeout: Duration) -> Self {
        Self { slot, call_timeout }
    }

    /// Returns the live actor of `id` (spawning it if needed).
    pub async fn actor_of(&self, id: Uuid) -> Result<ActorRef<A::Msg>> {
        let host = self.slot.get()?;
        match host
            .call(
                |reply| EntityHostMessage::Lookup { id, reply },
                Some(self.call_timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(answer)) => answer,
            Ok(ractor::rpc::CallResult::Timeout) => Err(Error::unavailable(format!(
                "the {} host did not answer in time",
                A::KIND
            ))),
            Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(Error::unavailable(format!(
                "the {} host is restarting",
                A::KIND
            ))),
        }
    }

    /// Returns the host's counts.
    pub async fn stats(&self) -> Result<EntityHostStats> {
        let host = self.slot.get()?;
        match host
            .call(
                |reply| EntityHostMessage::Stats { reply },
                Some(self.call_timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(stats)) => Ok(stats),
            _ => Err(Error::unavailable(format!(
                "the {} host did not answer",
                A::KIND
            ))),
        }
    }

    /// Sends the request built by `message` to the actor of `id` and waits for its answer.
    ///
    /// A request that finds the actor stopped (passivated, or crashed and respawned) is sent
    /// once more to a fresh actor; one whose actor died while holding it is resent only when
    /// `retry` allows it, and otherwise answers `OutcomeUnknown`.
    pub async fn ask<T: Send + 'static>(
        &self,
        id: Uuid,
        retry: Retry,
        message: impl Fn(RpcReplyPort<Result<T>>) -> A::Msg,
    ) -> Result<T> {
        let mut attempts_left = 2;
        loop {
            attempts_left -= 1;
            let actor = self.actor_of(id).await?;
            let (reply, answer) = ractor::concurrency::oneshot();
            let sent = actor.send_message(message(reply.into()));
            let outcome = match sent {
                Err(MessagingErr::SendErr(_)) | Err(MessagingErr::ChannelClosed) => {
                    Delivery::NotDelivered
                }
                Err(other) => {
                    return Err(Error::Internal(format!(
                        "cannot message the {} actor: {other}",
                        A::KIND
                    )));
                }
                Ok(()) => match tokio::time::timeout(self.call_timeout, answer).await {
                    Ok(Ok(answer)) => return answer,
                    Ok(Err(_)) => Delivery::DiedHolding,
                    Err(_) => {
                        return Err(Error::Unavailable {
                            message: format!("the {} actor did not answer in time", A::KIND),
                            retry_after: None,
                        });
                    }
                },
            };
            let may_retry = attempts_left > 0
                && (outcome == Delivery::NotDelivered || retry == Retry::Idempotent);
            if may_retry {
                continue;
            }
            return Err(match outcome {
                Delivery::NotDelivered => {
                    Error::unavailable(format!("the {} actor is restarting", A::KIND))
                }
                Delivery::DiedHolding => Error::OutcomeUnknown(format!(
                    "the {} actor stopped while handling the request",
                    A::KIND
                )),
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    NotDelivered,
    DiedHolding,
}

#[cfg(test)]
mod tests {
    //! The host's policies with tokio's clock paused: no PostgreSQL, no waiting.
    use super::*;

    /// An entity actor that answers pings and crashes on demand.
    #[derive(Debug, Clone)]
    struct Probe;

    #[derive(Debug)]
    enum ProbeMessage {
        Ping(RpcReplyPort<()>),
        Crash,
    }

    impl Actor for Probe {
        type Msg = ProbeMessage;
        type State = ();
        type Arguments = Uuid;

        async fn pre_start(
            &self,
            _: ActorRef<ProbeMessage>,
            _: Uuid,
        ) -> std::result::Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<ProbeMessage>,
            message: ProbeMessage,
            _: &mut (),
        ) -> std::result::Result<(), ActorProcessingErr> {
            match message {
                ProbeMessage::Ping(reply) => {
                    let _ = reply.send(());
                    Ok(())
                }
                ProbeMessage::Crash => Err("crashed on purpose".into()),
            }
        }
    }

    impl EntityActor for Probe {
        const KIND: &'static str = "probe";
    }

    fn settings() -> EntityHostSettings {
        EntityHostSettings {
            idle_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(30),
            max_restarts: 2,
            restart_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    type Host = ActorRef<EntityHostMessage<ProbeMessage>>;

    async fn host() -> Host {
        let host = EntityHost {
            factory: Probe,
            settings: settings(),
        };
        Actor::spawn(None, host, ()).await.unwrap().0
    }

    async fn lookup(host: &Host, id: Uuid) -> Result<ActorRef<ProbeMessage>> {
        ractor::call!(host, |reply| EntityHostMessage::Lookup { id, reply }).unwrap()
    }

    async fn stats(host: &Host) -> EntityHostStats {
        ractor::call!(host, |reply| EntityHostMessage::Stats { reply }).unwrap()
    }

    /// Lets the actors run what is queued (time stands still meanwhile).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// Crashes the live actor of `id` and waits until the host has counted it.
    async fn crash(host: &Host, id: Uuid) {
        let before = stats(host).await.restarts_total;
        lookup(host, id)
            .await
            .unwrap()
            .send_message(ProbeMessage::Crash)
            .unwrap();
        while stats(host).await.restarts_total == before {
            settle().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_actor_is_passivated_after_the_idle_timeout_and_respawned_on_use() {
        let host = host().await;
        let id = Uuid::new_v4();
        let first = lookup(&host, id).await.unwrap();
        assert_eq!(stats(&host).await.live, 1);

        // Used within the timeout: kept.
        tokio::time::advance(Duration::from_secs(200)).await;
        ractor::call!(first, ProbeMessage::Ping).unwrap();
        assert_eq!(lookup(&host, id).await.unwrap().get_id(), first.get_id());
        tokio::time::advance(Duration::from_secs(200)).await;
        settle().await;
        assert_eq!(
            stats(&host).await.live,
            1,
            "accessed 200 s ago: not idle yet"
        );

        // Idle past the timeout: the next sweep passivates it; the next use spawns afresh.
        tokio::time::advance(Duration::from_secs(150)).await;
        settle().await;
        let after = stats(&host).await;
        assert_eq!((after.live, after.passivated_total), (0, 1));
        let second = lookup(&host, id).await.unwrap();
        assert_ne!(second.get_id(), first.get_id());
        ractor::call!(second, ProbeMessage::Ping).unwrap();
        host.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_actor_respawns_after_a_doubling_backoff() {
        let host = host().await;
        let id = Uuid::new_v4();
        crash(&host, id).await;
        let Err(Error::Unavailable { retry_after, .. }) = lookup(&host, id).await else {
            panic!("a crashed entity waits for its backoff");
        };
        assert_eq!(retry_after, Some(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        let actor = lookup(&host, id)
            .await
            .expect("respawned after the backoff");
        ractor::call!(actor, ProbeMessage::Ping).unwrap();

        // The second crash within the window waits twice as long.
        crash(&host, id).await;
        let Err(Error::Unavailable { retry_after, .. }) = lookup(&host, id).await else {
            panic!("a crashed entity waits for its backoff");
        };
        assert_eq!(retry_after, Some(Duration::from_millis(200)));
        // Other entities are not affected.
        assert!(lookup(&host, Uuid::new_v4()).await.is_ok());
        host.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_entity_crashing_past_its_budget_is_quarantined_until_the_window_ends() {
        let host = host().await;
        let id = Uuid::new_v4();
        for _ in 0..3 {
            // Wait out each backoff, then crash again: three crashes, the budget is two.
            while lookup(&host, id).await.is_err() {
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            crash(&host, id).await;
        }
        let Err(Error::Unavailable { retry_after, .. }) = lookup(&host, id).await else {
            panic!("quarantined");
        };
        let wait = retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(stats(&host).await.quarantined, 1);
        tokio::time::advance(wait).await;
        assert!(
            lookup(&host, id).await.is_ok(),
            "released when the window ends"
        );
        host.stop(None);
    }
}
