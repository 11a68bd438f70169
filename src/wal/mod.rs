//! The write-ahead log under `{data_dir}/wal`: what makes an acknowledged message survive
//! kill -9 and power loss.
//!
//! **What a record holds.** The message as received — source, client id, receive time, topic
//! and raw payload — not the decoded row. That is the smallest form (a 60-byte reading costs
//! 60 bytes plus ~40 of framing, where decoded rows with field names would be several times
//! larger), it needs no second serialization format, and it keeps what a `_rejected` row needs
//! anyway. Replay runs the same decode with the same client id and receive time, so it
//! rebuilds the same rows. The price: replay re-decodes (about 1 µs per message), and a
//! changed `[[tables]]` config between a crash and the restart routes replayed messages by
//! the new rules.
//!
//! **Writing** ([`writer`]): one thread owns the active segment; concurrent groups share one
//! `write` and one `fdatasync` (group commit; syncs at least `wal.sync_interval` apart, 0 by default).
//! Records get consecutive sequence numbers in arrival order, and go on to the batcher only
//! once durable, so the batcher sees them in sequence order.
//!
//! **Files**: segments `{first_seq:020}.wal` ([`record`] has the framing), rotated past
//! `wal.segment_size`; each start appends to a new segment, so a torn tail from a crash is
//! never written after. A [`checkpoint`] records what is published; segments wholly below
//! its low-water mark are deleted.
//!
//! **Recovery** ([`log::replay`]): every record not covered by the checkpoint is fed back
//! into the pipeline before any listener accepts a connection.

pub mod checkpoint;
mod durable;
pub mod fs;
pub mod log;
pub mod record;
pub mod writer;

#[cfg(test)]
mod tests;

pub use checkpoint::{Checkpoint, CheckpointFile, Cut};
pub use durable::{Admitted, Done, Durable, NotStored};
pub use fs::{DiskFs, WalFs};
pub use log::{Log, Recovery, replay};
pub use writer::{Append, Feed, Routed, WalHandle};
