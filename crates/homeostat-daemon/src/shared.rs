//! State the daemon loop shares with its response threads (the throttle's rule and
//! flags, the rate limiters): one lock around it, taken for a decision at a time.
//!
//! The lock tolerates poisoning: a response thread that panicked while holding it
//! leaves the rule's state as it was after its last complete step, and the daemon
//! and the other responses must go on (the monitored programs come first).

use std::sync::{Arc, Mutex, MutexGuard};

/// A value behind one lock, shared by cloning the handle.
#[derive(Default)]
pub struct Locked<T>(Arc<Mutex<T>>);

impl<T> Clone for Locked<T> {
    fn clone(&self) -> Self {
        Locked(Arc::clone(&self.0))
    }
}

impl<T> Locked<T> {
    /// Shares `value`.
    pub fn new(value: T) -> Self {
        Locked(Arc::new(Mutex::new(value)))
    }

    /// Locks it (a panicked holder's state is still the rule's).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
