//! The poison-tolerant lock every shared table uses. A panic while a lock is held (a
//! tool's work, caught as a failed run) must not stop the server, and the holders here
//! leave their data whole at every step, so a poisoned lock is used as it is.

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads `rwlock`, poisoned or not.
pub(crate) fn read<T>(rwlock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    rwlock
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `rwlock`, poisoned or not.
pub(crate) fn write<T>(rwlock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    rwlock
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
