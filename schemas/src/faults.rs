//! Named fault points for the crash tests.
//!
//! When `TIDINGS_PAUSE_AT` names a point, the process announces it on stderr
//! and stops there for good, so a test can `kill -9` it at exactly that
//! instant. Unset (always, outside those tests), a point costs one lookup.

use std::sync::OnceLock;

static PAUSE_AT: OnceLock<Option<String>> = OnceLock::new();

/// Stops the whole process at `point` if `TIDINGS_PAUSE_AT` names it.
pub fn pause_at(point: &str) {
    let configured = PAUSE_AT.get_or_init(|| std::env::var("TIDINGS_PAUSE_AT").ok());
    if configured.as_deref() == Some(point) {
        eprintln!("tidings: paused at {point}");
        loop {
            std::thread::park();
        }
    }
}
