//! Memory budgets: bytes counted while something holds them (a page being
//! read, a request body being received) and given back when it is dropped.
//!
//! A counter, not a semaphore: nothing waits for room. What does not fit is
//! refused, and the caller decides what that means (a page ends early or is
//! refused; a body is refused). Whatever holds all of a budget's bytes alone
//! may always take more, so that one thing larger than the budget is served
//! when nothing else is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Room for `max` bytes, shared by everything that takes from it.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    max: usize,
    refused: AtomicU64,
    given: AtomicU64,
}

impl Budget {
    /// Room for `max` bytes.
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
            given: AtomicU64::new(0),
        })
    }

    /// The bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// The room.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many times [`Taken::take`] was refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// How many times bytes were given back: a holder refused for want of
    /// room need not try again until this has moved.
    pub fn given(&self) -> u64 {
        self.given.load(Relaxed)
    }

    fn give(&self, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Relaxed);
            self.given.fetch_add(1, Relaxed);
        }
    }
}

/// Bytes one holder has taken from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Taken {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Taken {
    /// Nothing taken yet from `budget`.
    pub fn new(budget: &Arc<Budget>) -> Taken {
        Taken {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Takes `bytes` more if they fit, or if this holds every byte the
    /// budget has given out (it is alone); `false`, and nothing taken,
    /// otherwise.
    pub fn take(&mut self, bytes: usize) -> bool {
        let (max, own) = (self.budget.max, self.bytes);
        // Decided on the total as it is, and only then added to it: a
        // refused holder never moves the total, so it never makes one that
        // holds all of it look not alone.
        let taken = self.budget.held.fetch_update(Relaxed, Relaxed, |before| {
            (before.saturating_add(bytes) <= max || before == own).then(|| before.saturating_add(bytes))
        });
        if taken.is_err() {
            self.budget.refused.fetch_add(1, Relaxed);
            return false;
        }
        self.bytes += bytes;
        true
    }

    /// Gives back `bytes` of those taken (at most all of them).
    pub fn give(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.budget.give(bytes);
        self.bytes -= bytes;
    }

    /// The bytes taken.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// What a value read under a budget holds of it (a page of documents),
/// given back when the value and all its clones are dropped. Not part of
/// the value: two values equal in all else are equal whatever they hold.
#[derive(Clone, Debug, Default)]
pub struct Holding(Option<Arc<Taken>>);

impl Holding {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |t| t.bytes())
    }
}

impl From<Taken> for Holding {
    fn from(taken: Taken) -> Holding {
        Holding(Some(Arc::new(taken)))
    }
}

impl PartialEq for Holding {
    fn eq(&self, _: &Holding) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_does_not_fit_is_refused_unless_alone_and_all_is_given_back() {
        let budget = Budget::new(100);
        let mut a = Taken::new(&budget);
        assert!(a.take(60));
        let mut b = Taken::new(&budget);
        assert!(b.take(40), "fits exactly");
        assert!(!b.take(1), "past the room, and not alone");
        assert_eq!((budget.held(), budget.refused()), (100, 1));
        assert!(!a.take(1), "a is not alone either");
        drop(b);
        assert!(a.take(500), "alone: a may pass the room");
        let mut c = Taken::new(&budget);
        assert!(!c.take(1), "nothing fits beside it");
        a.give(500);
        assert_eq!(a.bytes(), 60);
        assert!(c.take(40));
        let held = Holding::from(c);
        let copy = held.clone();
        drop(held);
        assert_eq!((copy.bytes(), budget.held()), (40, 100), "a clone still holds");
        drop((a, copy));
        assert_eq!(budget.held(), 0);
    }

    /// Another thread's refused takes never make a holder that is alone
    /// look otherwise (they used to add their bytes, then take them back).
    #[test]
    fn refused_takes_elsewhere_never_refuse_the_one_alone() {
        let budget = Budget::new(100);
        let mut alone = Taken::new(&budget);
        assert!(alone.take(150));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = {
            let (budget, stop) = (Arc::clone(&budget), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut refused = 0u64;
                while !stop.load(Relaxed) {
                    refused += u64::from(!Taken::new(&budget).take(1));
                }
                refused
            })
        };
        while budget.refused() < 1000 {
            std::thread::yield_now();
        }
        for _ in 0..100_000 {
            assert!(alone.take(1), "alone, it may always take more");
            alone.give(1);
        }
        stop.store(true, Relaxed);
        assert!(other.join().unwrap() >= 1000);
        assert_eq!(budget.held(), 150);
        let given = budget.given();
        drop(alone);
        assert_eq!((budget.held(), budget.given()), (0, given + 1));
    }

    #[test]
    fn a_first_take_larger_than_the_room_is_given_when_nothing_else_holds() {
        let budget = Budget::new(10);
        let mut alone = Taken::new(&budget);
        assert!(alone.take(1000));
        drop(alone);
        assert_eq!(budget.held(), 0);
    }
}
