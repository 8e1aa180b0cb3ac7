//! Fault injection for the crash tests: `SAERL_KILL_AT=POINT:N` makes the process SIGKILL
//! itself the N-th time it passes the named point (`SAERL_KILL_AT=POINT` means the first time).
//! Points are plain names at the places where a crash matters: between files of a commit,
//! after an ingest chunk, after a training epoch, ... Unset (always, outside tests), a point
//! costs one relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn target() -> Option<&'static (String, u64)> {
    static T: OnceLock<Option<(String, u64)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var("SAERL_KILL_AT").ok()?;
        let (name, n) = match v.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().ok()?),
            None => (v, 1),
        };
        Some((name, n))
    })
    .as_ref()
}

/// Marks a crash point; kills the process here when `SAERL_KILL_AT` names it.
pub fn point(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((want, n)) = target() else { return };
    if want == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
        eprintln!("SAERL_KILL_AT: killing the process at {name} (hit {n})");
        // SIGKILL, as an out-of-memory kill or a pulled plug would: no unwinding, no Drop.
        // SAFETY: kill takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
