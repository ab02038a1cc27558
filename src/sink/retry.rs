//! Retry delays: capped exponential backoff with jitter, so that many writers
//! retrying at once spread out instead of hammering a struggling engine together.

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `attempt` (1 for the first retry): a random
/// value between half and all of `min(max, initial * 2^(attempt - 1))`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    cap.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_with_jitter() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 1..=12 {
            let expected = (initial * 2u32.pow(attempt - 1)).min(max);
            for _ in 0..50 {
                let d = backoff(initial, max, attempt);
                assert!(
                    d <= expected && d >= expected / 2,
                    "attempt {attempt}: {d:?}"
                );
            }
        }
        assert!(backoff(initial, max, 1000) <= max);
    }
}
