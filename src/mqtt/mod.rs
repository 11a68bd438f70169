//! The device-facing MQTT listener (see ARCHITECTURE.md, "Decisions"):
//! [`listener`] accepts TCP connections under a connection limit; each runs in its own task
//! ([`connection`]) that frames packets with [`codec`] and follows the sans-IO [`session`]
//! state machine. Acks are sent only after the message was admitted into the pipeline.

pub mod aliases;
pub mod codec;
pub mod connection;
pub mod gate;
pub mod listener;
pub mod recent;
pub mod session;
pub mod session_store;

pub use listener::{Listener, Routes};
