//! Giving freed memory back to the operating system while serving.
//!
//! A server's heap churns: every connection, request and stream allocates and frees buffers on
//! the tokio worker threads. glibc's allocator (the default on Linux) keeps what the workers
//! free in their arenas, and frees in the middle of an arena are never returned on their own:
//! under a steady mix of traffic the resident size climbs with the live heap unchanged (the
//! `soak_mix` scenario of `bench/README.md` measures it). So while it runs, a server asks glibc
//! to release its free pages (`malloc_trim(0)`) every
//! [`crate::HttpOptions::memory_trim_interval`] (1 s by default): resident memory then follows
//! the live heap instead of its high-water mark.
//!
//! A trim takes each arena's lock in turn while it walks that arena's free chunks, once per
//! interval. On other platforms it does nothing; with another global allocator (mimalloc,
//! jemalloc) it has nothing to do and can be turned off with
//! [`crate::Serve::memory_trim_interval`]`(None)`.

use std::time::Duration;

use tokio::sync::watch;

/// The default period between trims.
pub(crate) const DEFAULT_TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Trims every `interval` until `stop` turns true (or its sender is gone). Cancel safe: it
/// holds nothing between trims.
pub(crate) async fn trim_periodically(interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // Stopped, or the server (the sender) is gone.
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let started = std::time::Instant::now();
        let released = trim();
        tracing::debug!(
            released,
            took_us = started.elapsed().as_micros() as u64,
            "returned free heap pages to the OS"
        );
    }
}

/// Asks the allocator to give its free pages back; whether any were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only touches glibc's own allocator state under
    // its arena locks; glibc documents it as MT-safe.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks the allocator to give its free pages back (nothing to do off glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trims_until_the_server_stops() {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(trim_periodically(Duration::from_secs(1), rx));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(
            !task.is_finished(),
            "the trimmer runs while the server does"
        );
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_millis(1), task)
            .await
            .expect("the trimmer ends as soon as the server stops")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_server_ends_the_trimmer_too() {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(trim_periodically(Duration::from_secs(1), rx));
        drop(stop);
        tokio::time::timeout(Duration::from_millis(1), task)
            .await
            .expect("the trimmer ends when its server is gone")
            .unwrap();
    }
}
