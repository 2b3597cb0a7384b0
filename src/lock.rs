//! The poison-tolerant lock every shared table uses. A panic while a lock is held (a
//! tool's work, caught as a failed run) must not stop the server, and the holders here
//! leave their data whole at every step, so a poisoned lock is used as it is.

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
