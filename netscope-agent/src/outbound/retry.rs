//! Retry decisions: which failures are worth another attempt (the delays between attempts are
//! [`crate::backoff::Backoff`]'s, bounded by the target's policy).

use super::policy::RetryConfig;
use crate::domain::outcome::{AttemptError, RetryStop};

/// Statuses that say "try again": gateway trouble, unavailable, timeout, too many requests.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Does this attempt count as a failure of the target (for its circuit)?
pub fn is_failure(status: Option<u16>, error: Option<AttemptError>) -> bool {
    error.is_some() || status.is_some_and(|s| s >= 500)
}

/// Why no other attempt follows this one (`status`/`error` are its result, `attempts` how
/// many were made so far), or `None` when one may — if the deadline leaves room and the retry
/// budget has some, which the caller checks next.
pub fn stop_reason(
    status: Option<u16>,
    error: Option<AttemptError>,
    retryable: bool,
    attempts: u32,
    policy: &RetryConfig,
) -> Option<RetryStop> {
    let worth_retrying = match (status, error) {
        (Some(s), _) => retryable_status(s),
        // Every transport failure is worth another attempt; whether this request may be
        // repeated at all is checked next.
        (None, Some(_)) => true,
        (None, None) => false,
    };
    if !worth_retrying {
        return Some(if status.is_some_and(|s| s < 400) {
            RetryStop::Succeeded
        } else {
            RetryStop::NotRetryable
        });
    }
    if !retryable {
        return Some(RetryStop::NotIdempotent);
    }
    if attempts >= policy.max_attempts {
        return Some(RetryStop::MaxAttempts);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for s in [429, 502, 503, 504] {
            assert!(retryable_status(s));
        }
        for s in [200, 400, 404, 409, 500, 501] {
            assert!(!retryable_status(s), "{s}");
        }
        assert!(is_failure(Some(500), None));
        assert!(is_failure(None, Some(AttemptError::Timeout)));
        assert!(!is_failure(Some(404), None));
        assert!(!is_failure(Some(429), None));
    }

    #[test]
    fn a_retry_follows_only_a_retryable_failure_of_a_repeatable_call_with_attempts_left() {
        let policy = RetryConfig {
            max_attempts: 3,
            ..RetryConfig::default()
        };
        let stop = |status, error, retryable, attempts| {
            stop_reason(status, error, retryable, attempts, &policy)
        };
        assert_eq!(stop(Some(200), None, true, 1), Some(RetryStop::Succeeded));
        assert_eq!(
            stop(Some(404), None, true, 1),
            Some(RetryStop::NotRetryable)
        );
        assert_eq!(
            stop(Some(500), None, true, 1),
            Some(RetryStop::NotRetryable)
        );
        assert_eq!(
            stop(Some(503), None, false, 1),
            Some(RetryStop::NotIdempotent)
        );
        assert_eq!(
            stop(None, Some(AttemptError::ConnectionReset), false, 1),
            Some(RetryStop::NotIdempotent),
            "a non-idempotent call without a key is never repeated"
        );
        assert_eq!(stop(Some(503), None, true, 3), Some(RetryStop::MaxAttempts));
        assert_eq!(stop(Some(503), None, true, 2), None);
        assert_eq!(stop(None, Some(AttemptError::Timeout), true, 1), None);
    }
}
