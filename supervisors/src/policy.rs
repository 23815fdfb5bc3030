//! Restart budgets with exponential backoff, shared by every supervisor.

use std::time::{Duration, Instant};

use ractor::{ActorCell, SupervisionEvent};

/// The child a supervision event reports gone (failed, or stopped with its reason); `None`
/// for the events that need no action (started, process-group changes).
pub fn child_exit(event: SupervisionEvent) -> Option<(ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, error) => Some((cell, error.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell, reason.unwrap_or_else(|| "stopped".into())))
        }
        _ => None,
    }
}

/// A child that ran this long before failing starts its backoff over.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How a supervisor restarts a failed child: after a backoff that doubles from
/// `backoff_initial` up to `backoff_max` with each consecutive failure, and, if the child has
/// a budget, at most `max_restarts` times within `window` before escalating to the parent.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl RestartPolicy {
    /// The policy of a child restarted for as long as it takes, never escalated: its failures
    /// come from systems outside the process (the broker, PostgreSQL's replication), and
    /// escalating would only stop the rest of the process with it.
    pub fn without_budget(backoff_initial: Duration, backoff_max: Duration) -> Self {
        Self {
            max_restarts: u32::MAX,
            window: STABLE_AFTER,
            backoff_initial,
            backoff_max,
        }
    }
}

/// The restart history of one child, the same for every supervisor: failures within the
/// policy's window (the budget) and consecutive failures (the backoff). The backoff starts
/// over only once the child ran [`STABLE_AFTER`] before failing — not on every successful
/// start, or a child failing right after starting would be restarted at the shortest delay
/// for ever.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// When the child failed, within the window.
    recent: Vec<Instant>,
    /// Failures since the child last ran stably.
    streak: u32,
    /// When the current run of the child started.
    started: Option<Instant>,
}

/// Records a failure, now, of a child that has no budget
/// ([`RestartPolicy::without_budget`]) and returns the delay before its restart.
pub fn restart_delay(
    tracker: &mut RestartTracker,
    backoff_initial: Duration,
    backoff_max: Duration,
) -> Duration {
    let policy = RestartPolicy::without_budget(backoff_initial, backoff_max);
    match tracker.on_failure(&policy, Instant::now()) {
        RestartDecision::RestartAfter(delay) => delay,
        // Past u32::MAX failures within a minute: keep restarting at the longest delay.
        RestartDecision::Escalate => backoff_max,
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// The budget is spent: escalate to the parent.
    Escalate,
}

impl RestartTracker {
    /// The child started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// Records a failure (or a failed start) at `now` and decides.
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant) -> RestartDecision {
        if self
            .started
            .take()
            .is_some_and(|started| now.duration_since(started) >= STABLE_AFTER)
        {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        self.recent
            .retain(|at| now.duration_since(*at) < policy.window);
        self.recent.push(now);
        if self.recent.len() as u64 > u64::from(policy.max_restarts) {
            return RestartDecision::Escalate;
        }
        RestartDecision::RestartAfter(medflow_actors::backoff::doubling(
            policy.backoff_initial,
            policy.backoff_max,
            self.streak,
        ))
    }

    /// Failures counted in the current window.
    pub fn recent_failures(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
        }
    }

    #[test]
    fn the_backoff_grows_while_the_child_fails_soon_after_starting_and_starts_over_once_it_ran_stably()
     {
        let policy =
            RestartPolicy::without_budget(Duration::from_millis(100), Duration::from_secs(10));
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        let delay = |ms| RestartDecision::RestartAfter(Duration::from_millis(ms));
        // Fails at once, then a second after each start: the backoff keeps doubling, and a
        // child without a budget is never escalated.
        assert_eq!(tracker.on_failure(&policy, start), delay(100));
        let mut expected = 100;
        for n in 2..=40 {
            let at = start + Duration::from_secs(n);
            tracker.started(at);
            expected = (expected * 2).min(10_000);
            assert_eq!(
                tracker.on_failure(&policy, at + Duration::from_secs(1)),
                delay(expected)
            );
        }
        // Ran for the stable period before failing: it starts over.
        let at = start + Duration::from_secs(100);
        tracker.started(at);
        assert_eq!(tracker.on_failure(&policy, at + STABLE_AFTER), delay(100));
    }

    #[test]
    fn a_child_that_runs_stably_between_failures_keeps_a_short_backoff_but_spends_its_budget() {
        let mut tracker = RestartTracker::default();
        let long = RestartPolicy {
            window: Duration::from_secs(3600),
            ..policy()
        };
        let start = Instant::now();
        for n in 0..3 {
            let at = start + STABLE_AFTER * 2 * n;
            tracker.started(at);
            assert_eq!(
                tracker.on_failure(&long, at + STABLE_AFTER),
                RestartDecision::RestartAfter(Duration::from_millis(100))
            );
        }
        let at = start + STABLE_AFTER * 6;
        tracker.started(at);
        assert_eq!(
            tracker.on_failure(&long, at + STABLE_AFTER),
            RestartDecision::Escalate
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_escalates() {
        let mut tracker = RestartTracker::default();
        let now = Instant::now();
        assert_eq!(
            tracker.on_failure(&policy(), now),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            tracker.on_failure(&policy(), now),
            RestartDecision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            tracker.on_failure(&policy(), now),
            RestartDecision::RestartAfter(Duration::from_millis(250))
        );
        assert_eq!(
            tracker.on_failure(&policy(), now),
            RestartDecision::Escalate
        );
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut tracker = RestartTracker::default();
        let start = Instant::now();
        for _ in 0..3 {
            tracker.on_failure(&policy(), start);
        }
        // The child then ran for longer than the window before failing again.
        tracker.started(start);
        let later = start + Duration::from_secs(61);
        assert_eq!(
            tracker.on_failure(&policy(), later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(tracker.recent_failures(), 1);
    }
}
