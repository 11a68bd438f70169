//! The store of persistent MQTT sessions (clients that connect without clean session): for
//! each client id, the QoS 2 packet ids it left awaiting PUBREL. A connection takes its
//! session out on CONNECT and puts it back when it ends. In memory only, bounded by
//! [`MAX_SESSIONS`]: past that, a session is not stored (logged) and its client may see a
//! QoS 2 message it resends after reconnecting stored twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Most stored sessions.
pub const MAX_SESSIONS: usize = 100_000;

/// Persistent sessions by client id.
#[derive(Debug, Default)]
pub struct SessionStore {
    // Touched once per CONNECT and once per disconnect, never per message.
    inner: Mutex<HashMap<String, HashSet<u16>>>,
}

impl SessionStore {
    /// Takes the session of `client_id` out of the store.
    pub fn take(&self, client_id: &str) -> Option<HashSet<u16>> {
        self.inner.lock().ok()?.remove(client_id)
    }

    /// Forgets the session of `client_id`.
    pub fn discard(&self, client_id: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(client_id);
        }
    }

    /// Stores the session of `client_id`; `false` when the store is full.
    pub fn park(&self, client_id: String, qos2_pending: HashSet<u16>) -> bool {
        let Ok(mut map) = self.inner.lock() else {
            return false;
        };
        if map.len() >= MAX_SESSIONS && !map.contains_key(&client_id) {
            return false;
        }
        map.insert(client_id, qos2_pending);
        true
    }
}
