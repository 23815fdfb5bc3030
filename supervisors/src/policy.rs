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

/// The consecutive failures of a child restarted for as long as it takes (never escalated):
/// its backoff doubles with each one and starts over only once the child ran
/// [`STABLE_AFTER`] before failing — not on every successful start, or a child failing right
/// after starting would be restarted at the shortest delay for ever.
#[derive(Debug, Clone, Copy, Default)]
pub struct FailureStreak {
    failures: u32,
    started: Option<Instant>,
}

impl FailureStreak {
    /// The child started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// The child failed (or could not start) at `now`: the streak's length, from 1.
    pub fn failed(&mut self, now: Instant) -> u32 {
        if self
            .started
            .take()
            .is_some_and(|started| now.duration_since(started) >= STABLE_AFTER)
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.failures
    }
}

/// How a supervisor restarts a failed child: at most `max_restarts` within `window`, each
/// after a backoff that doubles from `backoff_initial` up to `backoff_max`.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Restarts of one child within the current window.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    failures: Vec<Instant>,
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
    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant) -> RestartDecision {
        self.failures
            .retain(|at| now.duration_since(*at) < policy.window);
        self.failures.push(now);
        let count = self.failures.len() as u32;
        if count > policy.max_restarts {
            return RestartDecision::Escalate;
        }
        RestartDecision::RestartAfter(medflow_actors::backoff::doubling(
            policy.backoff_initial,
            policy.backoff_max,
            count,
        ))
    }

    /// Failures counted in the current window.
    pub fn recent_failures(&self) -> usize {
        self.failures.len()
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
    fn a_streak_grows_while_the_child_fails_soon_after_starting_and_ends_once_it_ran_stably() {
        let mut streak = FailureStreak::default();
        let start = Instant::now();
        // Fails at once, or a second after each start: the backoff keeps doubling.
        assert_eq!(streak.failed(start), 1);
        for n in 2..=5 {
            let at = start + Duration::from_secs(n);
            streak.started(at);
            assert_eq!(streak.failed(at + Duration::from_secs(1)), n as u32);
        }
        // Ran for the stable period before failing: it starts over.
        let at = start + Duration::from_secs(100);
        streak.started(at);
        assert_eq!(streak.failed(at + STABLE_AFTER), 1);
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
        let later = start + Duration::from_secs(61);
        assert_eq!(
            tracker.on_failure(&policy(), later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(tracker.recent_failures(), 1);
    }
}
