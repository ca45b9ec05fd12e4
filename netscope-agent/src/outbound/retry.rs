//! Retry decisions: which failures are worth another attempt (the delays between attempts are
//! [`crate::backoff::Backoff`]'s, bounded by the target's policy).

use crate::domain::outcome::AttemptError;

/// Statuses that say "try again": gateway trouble, unavailable, timeout, too many requests.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Does this attempt count as a failure of the target (for its circuit)?
pub fn is_failure(status: Option<u16>, error: Option<AttemptError>) -> bool {
    error.is_some() || status.is_some_and(|s| s >= 500)
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
}
