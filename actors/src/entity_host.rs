//! `EntityHost`: spawns one entity actor per id on demand, hands out its reference, and
//! stops it after it was idle for the configured time, so memory is bounded by the live
//! working set rather than by the table size.
//!
//! ```text
//! EntityHost<PatientActor>
//! ├─ PatientActor(id₁)   spawned on the first Lookup of id₁
//! ├─ PatientActor(id₂)   drained and stopped after `idle_timeout` without a Lookup; what it
//! │                      knew stays with the host as an idle state (one `Arc` of the entity)
//! └─ …                   a crashed child is forgotten; the next Lookup respawns it and it
//!                        reloads from PostgreSQL, after a backoff that grows per crash
//! ```
//!
//! An actor costs a few KiB (its task and mailboxes) even when nobody uses it; an idle state
//! costs the entity and a map entry. A passivated actor's last state is kept (at most
//! `idle_states` per kind, least recently used dropped first) and handed to the actor spawned
//! for the same id, which then starts without a database read. Such a state is treated
//! exactly like a live actor's: it may be older than the committed row (another instance
//! wrote), so reads compare it with the committed version and writes are checked against the
//! row (see [`EntityState`]).
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

use lru::LruCache;

use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, MessagingErr, RpcReplyPort,
    SupervisionEvent,
};
use uuid::Uuid;

use crate::entity_state::{EntityState, Versioned};
use crate::error::{Error, Result};
use crate::internal_events::{EntityActorCrashed, EntityActorsPassivated, emit};

// Tokio's clock, not the system's: the host's timing is tested with paused time.
use tokio::time::Instant;

/// An actor that owns one entity. It starts with the state the host hands it (unloaded, or
/// the idle state a passivated predecessor left) and stops with its state, which the host
/// keeps while the entity is idle.
pub trait EntityActor:
    Actor<
        Arguments = EntityState<<Self as EntityActor>::Entity>,
        State = EntityState<<Self as EntityActor>::Entity>,
    > + Clone
    + Sync
{
    /// The entity kind, for logs, metrics and error messages (`"patient"`).
    const KIND: &'static str;
    /// The entity the actor owns.
    type Entity: Versioned + Send + Sync + 'static;
}

/// Passivation and crash-restart policy of one host.
#[derive(Debug, Clone)]
pub struct EntityHostSettings {
    /// An entity actor with no access for this long is stopped.
    pub idle_timeout: Duration,
    /// How often idle actors are looked for.
    pub sweep_interval: Duration,
    /// How many passivated actors' last states are kept (least recently used dropped first;
    /// 0 keeps none).
    pub idle_states: usize,
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
    /// Entity actors running.
    pub live: usize,
    /// Passivated entities whose last state is kept.
    pub idle: usize,
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

pub struct EntityHostState<A: EntityActor> {
    live: HashMap<Uuid, LiveEntry<A::Msg>>,
    ids_by_actor: HashMap<ActorId, Uuid>,
    /// Last states of passivated actors, by entity id.
    idle: LruCache<Uuid, Arc<A::Entity>>,
    crashes: HashMap<Uuid, CrashRecord>,
    sweeper: Option<JoinHandle<()>>,
    passivated_total: u64,
    restarts_total: u64,
}

impl<A: EntityActor> Actor for EntityHost<A> {
    type Msg = EntityHostMessage<A::Msg>;
    type State = EntityHostState<A>;
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
            // Unbounded map, bounded by `keep_idle`: no allocation up front for the capacity.
            idle: LruCache::unbounded(),
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
        // The actors stop with their host; what they knew is not carried over.
        state.live.clear();
        state.idle.clear();
        Self::report(state);
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
                    idle: state.idle.len(),
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
            SupervisionEvent::ActorTerminated(cell, last_state, _) => {
                if let Some(id) = state.forget(cell.get_id()) {
                    let entity = last_state
                        .and_then(|mut boxed| boxed.take::<A::State>().ok())
                        .and_then(EntityState::into_live);
                    if let Some(entity) = entity {
                        self.keep_idle(state, id, entity);
                    }
                }
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
        Self::report(state);
        Ok(())
    }
}

impl<A: EntityActor> EntityHostState<A> {
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
        state: &mut EntityHostState<A>,
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
        // The idle state moves into the actor (which may leave it again when it stops).
        let start = match state.idle.pop(&id) {
            Some(entity) => EntityState::Live(entity),
            None => EntityState::new(id),
        };
        let (actor, _) = Actor::spawn_linked(None, self.factory.clone(), start, myself.get_cell())
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
        Self::report(state);
        Ok(actor)
    }

    /// Keeps the last state of the passivated actor of `id`, unless a newer actor of `id` is
    /// already live (it knows at least as much) or a newer state is already kept.
    fn keep_idle(&self, state: &mut EntityHostState<A>, id: Uuid, entity: Arc<A::Entity>) {
        let capacity = self.settings.idle_states;
        if capacity == 0 || state.live.contains_key(&id) {
            return;
        }
        if state
            .idle
            .peek(&id)
            .is_some_and(|kept| kept.version() >= entity.version())
        {
            return;
        }
        state.idle.put(id, entity);
        while state.idle.len() > capacity {
            state.idle.pop_lru();
        }
    }

    fn report(state: &EntityHostState<A>) {
        metrics::gauge!("medflow_entity_actors_live", "kind" => A::KIND)
            .set(state.live.len() as f64);
        metrics::gauge!("medflow_entity_states_idle", "kind" => A::KIND)
            .set(state.idle.len() as f64);
    }

    fn sweep(&self, state: &mut EntityHostState<A>) {
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
        Self::report(state);
    }

    /// Counts a crash of `id` and sets when it may respawn; returns the crash count.
    fn record_crash(&self, state: &mut EntityHostState<A>, id: Uuid) -> u32 {
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

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The committed rows of a stand-in store (id → version; an unknown id is at version 1),
    /// shared by the instances' hosts like PostgreSQL, and how many loads it served.
    #[derive(Debug, Default)]
    struct Table {
        versions: Mutex<HashMap<Uuid, i64>>,
        loads: AtomicUsize,
    }

    impl Table {
        /// Another instance commits a write of `id`.
        fn write(&self, id: Uuid) -> i64 {
            let mut versions = self.versions.lock().unwrap();
            let version = versions.entry(id).or_insert(1);
            *version += 1;
            *version
        }

        fn loads(&self) -> usize {
            self.loads.load(Ordering::SeqCst)
        }
    }

    #[derive(Debug)]
    struct Row {
        id: Uuid,
        version: i64,
    }

    impl Versioned for Row {
        fn id(&self) -> Uuid {
            self.id
        }
        fn version(&self) -> i64 {
            self.version
        }
    }

    /// An entity actor over the stand-in store: reads like the real ones (load on first use,
    /// reload when the committed version is newer) and crashes on demand.
    #[derive(Debug, Clone)]
    struct Probe(Arc<Table>);

    #[derive(Debug)]
    enum ProbeMessage {
        Get {
            at_least: Option<i64>,
            reply: RpcReplyPort<Result<Arc<Row>>>,
        },
        Crash,
    }

    impl Actor for Probe {
        type Msg = ProbeMessage;
        type State = EntityState<Row>;
        type Arguments = EntityState<Row>;

        async fn pre_start(
            &self,
            _: ActorRef<ProbeMessage>,
            start: EntityState<Row>,
        ) -> std::result::Result<EntityState<Row>, ActorProcessingErr> {
            Ok(start)
        }

        async fn handle(
            &self,
            myself: ActorRef<ProbeMessage>,
            message: ProbeMessage,
            state: &mut EntityState<Row>,
        ) -> std::result::Result<(), ActorProcessingErr> {
            match message {
                ProbeMessage::Get { at_least, reply } => {
                    if let Some(at_least) = at_least {
                        state.refresh_below(at_least);
                    }
                    let table = self.0.clone();
                    let answer = state
                        .loaded(&myself, Self::KIND, |id| async move {
                            table.loads.fetch_add(1, Ordering::SeqCst);
                            let version = *table.versions.lock().unwrap().get(&id).unwrap_or(&1);
                            Ok(Some(Row { id, version }))
                        })
                        .await;
                    let _ = reply.send(answer);
                    Ok(())
                }
                ProbeMessage::Crash => Err("crashed on purpose".into()),
            }
        }
    }

    impl EntityActor for Probe {
        const KIND: &'static str = "probe";
        type Entity = Row;
    }

    fn settings() -> EntityHostSettings {
        EntityHostSettings {
            idle_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(30),
            idle_states: 100,
            max_restarts: 2,
            restart_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    type Host = ActorRef<EntityHostMessage<ProbeMessage>>;

    async fn host() -> Host {
        host_over(Arc::default(), settings()).await
    }

    async fn host_over(table: Arc<Table>, settings: EntityHostSettings) -> Host {
        let host = EntityHost {
            factory: Probe(table),
            settings,
        };
        Actor::spawn(None, host, ()).await.unwrap().0
    }

    /// Reads `id` through its actor, like a use case that saw `at_least` committed.
    async fn get(host: &Host, id: Uuid, at_least: Option<i64>) -> i64 {
        let actor = lookup(host, id).await.unwrap();
        let row = ractor::call!(actor, |reply| ProbeMessage::Get { at_least, reply })
            .unwrap()
            .unwrap();
        assert_eq!(row.id, id);
        row.version
    }

    /// Lets every actor go idle past the timeout and waits until the sweep stopped them.
    async fn passivate(host: &Host) {
        tokio::time::advance(settings().idle_timeout + settings().sweep_interval).await;
        while stats(host).await.live > 0 {
            settle().await;
        }
        settle().await;
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
        assert_eq!(get(&host, id, None).await, 1);
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
        assert_eq!(get(&host, id, None).await, 1);
        host.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passivated_entity_is_kept_as_its_state_and_its_next_actor_starts_without_a_load() {
        let table = Arc::new(Table::default());
        let host = host_over(table.clone(), settings()).await;
        let id = Uuid::new_v4();
        assert_eq!(get(&host, id, None).await, 1);
        assert_eq!(table.loads(), 1);
        passivate(&host).await;
        let after = stats(&host).await;
        assert_eq!((after.live, after.idle), (0, 1), "kept as an idle state");

        // The next actor starts from the kept state: no load.
        assert_eq!(get(&host, id, None).await, 1);
        assert_eq!(table.loads(), 1);
        let after = stats(&host).await;
        assert_eq!(
            (after.live, after.idle),
            (1, 0),
            "the state moved into the actor"
        );
        host.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_older_than_the_committed_row_is_reloaded_before_it_answers() {
        let table = Arc::new(Table::default());
        let host = host_over(table.clone(), settings()).await;
        let (live, idle) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(get(&host, idle, None).await, 1);
        passivate(&host).await;
        assert_eq!(get(&host, live, None).await, 1);

        // Another instance writes both: this host's live actor and kept state are now stale.
        let committed = (table.write(live), table.write(idle));
        assert_eq!(committed, (2, 2));
        // A read that saw the committed version reloads; one that saw an older one does not.
        assert_eq!(get(&host, live, Some(1)).await, 1);
        assert_eq!(get(&host, live, Some(2)).await, 2);
        assert_eq!(get(&host, idle, Some(2)).await, 2);
        assert_eq!(table.loads(), 4, "one first load each, one reload each");
        host.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_states_are_bounded_and_the_least_recently_used_go_first() {
        let table = Arc::new(Table::default());
        let bounded = EntityHostSettings {
            idle_states: 2,
            ..settings()
        };
        let host = host_over(table.clone(), bounded).await;
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            get(&host, *id, None).await;
            // One at a time, so they are kept in this order.
            passivate(&host).await;
        }
        assert_eq!(stats(&host).await.idle, 2);
        get(&host, ids[2], None).await;
        get(&host, ids[1], None).await;
        assert_eq!(table.loads(), 3, "the two newest were kept");
        get(&host, ids[0], None).await;
        assert_eq!(table.loads(), 4, "the oldest was dropped");

        // A crashed actor leaves nothing behind: its next actor loads.
        crash(&host, ids[1]).await;
        tokio::time::advance(settings().backoff_initial).await;
        get(&host, ids[1], None).await;
        assert_eq!(table.loads(), 5);
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
        lookup(&host, id)
            .await
            .expect("respawned after the backoff");
        assert_eq!(get(&host, id, None).await, 1);

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
