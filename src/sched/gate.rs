//! A gate unit tests put between a worker picking a batch and computing it.

use std::sync::PoisonError;

/// Lets tests hold the worker between picking a batch and computing it, so "while the worker is
/// busy" is a state they can reach without sleeps.
pub(crate) struct Gate {
    /// (batches allowed through, batches picked so far); `usize::MAX` permits means open.
    state: std::sync::Mutex<(usize, usize)>,
    cv: std::sync::Condvar,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new((usize::MAX, 0)),
            cv: std::sync::Condvar::new(),
        }
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
    pub(crate) fn pass(&self) {
        let mut g = self.lock();
        g.1 += 1;
        self.cv.notify_all();
        while g.0 == 0 {
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        if g.0 != usize::MAX {
            g.0 -= 1;
        }
    }
    pub fn shut(&self) {
        self.lock().0 = 0;
    }
    pub fn open(&self) {
        self.lock().0 = usize::MAX;
        self.cv.notify_all();
    }
    /// Lets exactly one more batch through.
    pub fn step(&self) {
        self.lock().0 += 1;
        self.cv.notify_all();
    }
    /// Waits until the worker has picked its `n`th batch.
    pub fn wait_batches(&self, n: usize) {
        let mut g = self.lock();
        while g.1 < n {
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }
}
