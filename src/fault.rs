//! Crash points for the crash tests, in debug builds only (a release build compiles
//! [`point`] to nothing). `FLEETLAKE_FAULT=name` aborts the process (no flush, no clean-up,
//! like SIGKILL) the first time the named point is reached; `name:N` the N-th time. The points
//! sit between two durable steps whose order a promise depends on, where a random kill rarely
//! lands.

#[cfg(debug_assertions)]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(debug_assertions)]
static HITS: AtomicU64 = AtomicU64::new(0);

/// `FLEETLAKE_FAULT`'s point name and hit number, if it names one.
#[cfg(debug_assertions)]
fn parse(spec: &str) -> Option<(&str, u64)> {
    match spec.split_once(':') {
        Some((name, n)) => Some((name, n.parse().ok().filter(|n| *n > 0)?)),
        None if !spec.is_empty() => Some((spec, 1)),
        None => None,
    }
}

/// Aborts the process here when `FLEETLAKE_FAULT` names this point (debug builds).
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    {
        let Ok(spec) = std::env::var("FLEETLAKE_FAULT") else {
            return;
        };
        let Some((wanted, nth)) = parse(&spec) else {
            return;
        };
        if wanted == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            eprintln!("fleetlake: FLEETLAKE_FAULT: aborting at {name} (hit {nth})");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(all(test, debug_assertions))]
mod tests {
    #[test]
    fn specs_name_a_point_and_a_hit() {
        assert_eq!(
            super::parse("delta-before-commit"),
            Some(("delta-before-commit", 1))
        );
        assert_eq!(super::parse("x:3"), Some(("x", 3)));
        assert_eq!(super::parse("x:0"), None);
        assert_eq!(super::parse("x:y"), None);
        assert_eq!(super::parse(""), None);
    }
}
