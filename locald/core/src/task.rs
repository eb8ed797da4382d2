//! Small helpers for tasks.

/// Aborts a task when dropped (a follower, a proxy, a health checker that
/// must not outlive what owns it).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
