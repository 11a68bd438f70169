//! What connections leave for the next connection of their client id ([`Parked`]: whether the
//! session was persistent, what the client published recently). A connection takes its entry
//! out on CONNECT and puts it back when it ends; a start seeds it from the WAL. In memory,
//! bounded by [`MAX_SESSIONS`]: past that, an entry is not stored (logged) and its client may
//! see a message it resends after reconnecting stored twice.

use std::collections::HashMap;
use std::sync::Mutex;

use super::session::Parked;

/// Most stored sessions.
pub const MAX_SESSIONS: usize = 100_000;

/// Persistent sessions by client id.
#[derive(Debug, Default)]
pub struct SessionStore {
    // Touched once per CONNECT and once per disconnect, never per message.
    inner: Mutex<HashMap<String, Parked>>,
}

impl SessionStore {
    /// A store holding `seeded` (what the WAL says clients published recently).
    pub fn seeded(seeded: HashMap<String, Parked>) -> Self {
        Self {
            inner: Mutex::new(seeded),
        }
    }

    /// Takes the session of `client_id` out of the store.
    pub fn take(&self, client_id: &str) -> Option<Parked> {
        self.inner.lock().ok()?.remove(client_id)
    }

    /// Stores the session of `client_id`; `false` when the store is full.
    pub fn park(&self, client_id: String, parked: Parked) -> bool {
        let Ok(mut map) = self.inner.lock() else {
            return false;
        };
        if map.len() >= MAX_SESSIONS && !map.contains_key(&client_id) {
            return false;
        }
        map.insert(client_id, parked);
        true
    }
}
