//! The retry budget (Finagle's algorithm, which tower's `TpsBudget` also follows; NetScope does
//! not use tower's): retries allowed are a share
//! (`ratio`) of the calls made over the last `ttl`, plus a reserve of `min_per_sec` per second
//! so that a quiet target can still retry. Unlike tower's, it can say how much is left.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The window is kept as this many slots.
const SLOTS: u32 = 10;

#[derive(Debug)]
struct Slot {
    start: Instant,
    deposits: u64,
    withdrawals: u64,
}

#[derive(Debug)]
pub struct RetryBudget {
    ttl: Duration,
    reserve: f64,
    ratio: f64,
    slots: Mutex<VecDeque<Slot>>,
}

impl RetryBudget {
    /// Values are validated with the policy (`ttl` 1–60 s, `ratio` 0–1000).
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        Self {
            ttl,
            reserve: f64::from(min_per_sec) * ttl.as_secs_f64(),
            ratio: f64::from(ratio),
            slots: Mutex::new(VecDeque::with_capacity(SLOTS as usize + 1)),
        }
    }

    fn current<'a>(&self, slots: &'a mut VecDeque<Slot>, now: Instant) -> &'a mut Slot {
        while slots.front().is_some_and(|s| s.start + self.ttl <= now) {
            slots.pop_front();
        }
        let width = self.ttl / SLOTS;
        if slots.back().is_none_or(|s| s.start + width <= now) {
            slots.push_back(Slot {
                start: now,
                deposits: 0,
                withdrawals: 0,
            });
        }
        // Just pushed or already there.
        let last = slots.len() - 1;
        &mut slots[last]
    }

    fn balance(&self, slots: &VecDeque<Slot>) -> f64 {
        let (d, w) = slots.iter().fold((0u64, 0u64), |(d, w), s| {
            (d + s.deposits, w + s.withdrawals)
        });
        self.reserve + self.ratio * d as f64 - w as f64
    }

    /// A call was made.
    pub fn deposit(&self, now: Instant) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        self.current(&mut slots, now).deposits += 1;
    }

    /// May a retry be made? Takes it from the budget when yes.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        self.current(&mut slots, now);
        if self.balance(&slots) < 1.0 {
            return false;
        }
        self.current(&mut slots, now).withdrawals += 1;
        true
    }

    /// Retries the budget allows right now.
    pub fn left(&self, now: Instant) -> u32 {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        self.current(&mut slots, now);
        self.balance(&slots).max(0.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_calls_plus_a_reserve() {
        let t0 = Instant::now();
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        assert!(!b.withdraw(t0), "no calls, no reserve: no retry");
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!(b.left(t0), 2);
        assert!(b.withdraw(t0));
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0), "20 % of 10 calls is 2 retries");
        assert_eq!(b.left(t0), 0);
    }

    #[test]
    fn the_reserve_refills_as_the_window_slides() {
        let t0 = Instant::now();
        let b = RetryBudget::new(Duration::from_secs(1), 3, 0.0);
        assert_eq!(b.left(t0), 3);
        for _ in 0..3 {
            assert!(b.withdraw(t0));
        }
        assert!(!b.withdraw(t0 + Duration::from_millis(500)));
        assert_eq!(
            b.left(t0 + Duration::from_millis(1100)),
            3,
            "old withdrawals expired"
        );
    }
}
