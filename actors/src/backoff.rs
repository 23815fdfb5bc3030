//! The doubling backoff every restart in medflow uses.

use std::time::Duration;

/// The delay before retry number `failures` (1 for the first): `initial` doubled for each
/// earlier failure (at most 16 times), capped at `max`.
pub fn doubling(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    initial.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_failure_up_to_the_cap() {
        let ms = Duration::from_millis;
        let delays: Vec<Duration> = (1..=5).map(|n| doubling(ms(100), ms(500), n)).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(doubling(ms(100), ms(500), 0), ms(100));
        assert_eq!(doubling(ms(100), Duration::MAX, 1000), ms(100) * 65_536);
    }
}
