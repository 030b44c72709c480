//! Retry budget: retries may add at most `ratio` of the request rate (plus a small floor per
//! second), so a failing upstream sees a bounded amplification instead of a retry storm.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// One retry costs this many milli-tokens.
const RETRY_COST: i64 = 1000;

#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    deposit: i64,
    floor_per_sec: i64,
    cap: i64,
    last_refill_s: AtomicU64,
    epoch: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> RetryBudget {
        let floor = i64::from(min_per_sec) * RETRY_COST;
        RetryBudget {
            balance: AtomicI64::new(floor),
            deposit: (ratio.clamp(0.0, 1.0) * RETRY_COST as f64) as i64,
            floor_per_sec: floor,
            cap: floor.max(RETRY_COST) * 10,
            last_refill_s: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Every request pays into the budget.
    pub fn deposit(&self) {
        let b = self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        if b > self.cap {
            self.balance.fetch_sub(self.deposit, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.refill();
        let prev = self.balance.fetch_sub(RETRY_COST, Ordering::Relaxed);
        if prev >= RETRY_COST {
            return true;
        }
        self.balance.fetch_add(RETRY_COST, Ordering::Relaxed);
        false
    }

    fn refill(&self) {
        let now_s = self.epoch.elapsed().as_secs();
        let last = self.last_refill_s.load(Ordering::Relaxed);
        if now_s > last
            && self
                .last_refill_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let b = self.balance.load(Ordering::Relaxed);
            if b < self.floor_per_sec {
                self.balance
                    .fetch_add(self.floor_per_sec - b, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_after_the_floor() {
        let b = RetryBudget::new(0.2, 2);
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw(), "floor spent");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw(), "10 requests at 20% pay for 2 retries");
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }
}
