//! The log itself, synchronous and generic over [`WalFs`]: staging records (sequence numbers
//! are handed out here), writing and syncing the active segment, rotating, deleting released
//! segments, and reading everything back at start ([`replay`]).

use std::io;

use super::fs::{SegmentFile, WalFs};
use super::record::{self, Damage, Entry, Next, SegmentReader};

/// Staging buffer capacity kept between writes.
const STAGED_KEEP: usize = 256 * 1024;

/// The append side of the WAL.
#[derive(Debug)]
pub struct Log<F: WalFs> {
    fs: F,
    /// First sequence numbers of closed segments, ascending.
    closed: Vec<u64>,
    active: F::File,
    active_first: u64,
    /// Bytes written to the active segment (synced or not).
    active_len: u64,
    /// Next number to hand out (staged records already have theirs).
    next_seq: u64,
    /// Numbers below this are written (maybe not yet synced).
    written_seq: u64,
    segment_size: u64,
    staged: Vec<u8>,
}

/// What [`replay`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments read (all still on disk), ascending.
    pub segments: Vec<u64>,
    /// Valid records read.
    pub records: u64,
    /// Bytes of valid records read (framing included).
    pub bytes: u64,
    /// Highest sequence number read.
    pub max_seq: Option<u64>,
    /// Segments whose reading stopped at a torn or corrupt record.
    pub damaged: u64,
}

impl Recovery {
    /// The first number the next run may hand out: above every record and segment name.
    pub fn next_seq(&self) -> u64 {
        let after_records = self.max_seq.map_or(0, |s| s + 1);
        let after_names = self.segments.last().copied().unwrap_or(0);
        after_records.max(after_names)
    }
}

/// Reads every record of every segment, in order, into `each`. A segment whose reading stops
/// at a torn or corrupt record is logged (with the bytes left unread) and counted; reading goes
/// on with the next segment. An error from `each` or from the disk stops the replay.
pub fn replay<F: WalFs>(
    fs: &F,
    mut each: impl FnMut(Entry) -> io::Result<()>,
) -> io::Result<Recovery> {
    let mut rec = Recovery {
        segments: fs.list()?,
        ..Recovery::default()
    };
    for &first in &rec.segments {
        let mut reader = SegmentReader::new(fs.open_read(first)?);
        loop {
            match reader.next_record()? {
                Next::Record(entry) => {
                    rec.records += 1;
                    rec.bytes += record::framed_len(&entry) as u64;
                    rec.max_seq = Some(rec.max_seq.map_or(entry.seq, |m| m.max(entry.seq)));
                    each(entry)?;
                }
                Next::End => break,
                Next::Damaged(damage) => {
                    rec.damaged += 1;
                    let mut rest = 0u64;
                    // Count what is left unread so the log says how much was skipped.
                    let mut tail = fs.open_read(first)?;
                    let total = io::copy(&mut tail, &mut io::sink())?;
                    if let Damage::Torn { offset } | Damage::Corrupt { offset, .. } = damage {
                        rest = total.saturating_sub(offset);
                    }
                    if Some(&first) == rec.segments.last() {
                        tracing::warn!(
                            segment = first,
                            %damage,
                            bytes_not_replayed = rest,
                            "the last WAL segment ends in a damaged record; replay of it stops \
                             there (a record torn by a crash was never acknowledged)"
                        );
                    } else {
                        // Closed segments were fully synced before the next one began: this is
                        // corruption, and records after it that were acknowledged are lost.
                        tracing::error!(
                            segment = first,
                            %damage,
                            bytes_not_replayed = rest,
                            "a closed WAL segment is damaged; records after the damage cannot \
                             be replayed"
                        );
                    }
                    break;
                }
            }
        }
    }
    Ok(rec)
}

impl<F: WalFs> Log<F> {
    /// Starts appending after recovery, in a new segment named `next_seq`. `existing` are the
    /// segments recovery read; they stay until [`release`](Self::release)d.
    pub fn start(
        fs: F,
        mut existing: Vec<u64>,
        next_seq: u64,
        segment_size: u64,
    ) -> io::Result<Self> {
        // A segment already named `next_seq` holds no record (else `next_seq` would be higher):
        // a crash right after it was created. Replace it.
        if existing.last() == Some(&next_seq) {
            fs.remove(next_seq)?;
            existing.pop();
        }
        let mut log = Self {
            active: fs.create(next_seq)?,
            fs,
            closed: existing,
            active_first: next_seq,
            active_len: 0,
            next_seq,
            written_seq: next_seq,
            segment_size,
            staged: Vec::with_capacity(STAGED_KEEP),
        };
        log.begin_segment()?;
        Ok(log)
    }

    fn begin_segment(&mut self) -> io::Result<()> {
        self.active.append(record::MAGIC)?;
        self.active.sync()?;
        self.active_len = record::MAGIC.len() as u64;
        Ok(())
    }

    /// The next sequence number to be handed out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes staged and not yet written.
    pub fn staged_bytes(&self) -> usize {
        self.staged.len()
    }

    /// Frames one record in memory and returns its sequence number. It is durable only after
    /// a [`write`](Self::write) and a [`sync`](Self::sync) that both succeed.
    pub fn stage(
        &mut self,
        head: record::Head<'_>,
        received_at: i64,
        client: &str,
        topic: &str,
        payload: &[u8],
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        record::encode(
            &mut self.staged,
            seq,
            head,
            received_at,
            client,
            topic,
            payload,
        );
        seq
    }

    /// Writes the staged records. On error the segment is cut back to its last whole record
    /// and the records stay staged, so a later call retries them (after a full disk).
    pub fn write(&mut self) -> io::Result<usize> {
        if self.staged.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.active.append(&self.staged) {
            self.active.truncate(self.active_len)?;
            return Err(e);
        }
        let n = self.staged.len();
        self.active_len += n as u64;
        self.written_seq = self.next_seq;
        self.staged.clear();
        // A burst may have grown the buffer to megabytes; do not keep that outside the budget.
        if self.staged.capacity() > STAGED_KEEP * 4 {
            self.staged.shrink_to(STAGED_KEEP);
        }
        Ok(n)
    }

    /// Makes every written record durable. An error here is fatal for the caller: after a
    /// failed fsync the kernel may have dropped the dirty pages, so a retry proves nothing.
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync()
    }

    /// Starts a new segment once the active one passed `segment_size` (call after a sync:
    /// the old segment must be durable). On a full volume it keeps appending to the active
    /// segment and tries again after the next sync.
    pub fn rotate_if_full(&mut self) -> io::Result<bool> {
        if self.active_len < self.segment_size || !self.staged.is_empty() {
            return Ok(false);
        }
        let first = self.written_seq;
        let mut new = match self.fs.create(first) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Err(e) = new.append(record::MAGIC).and_then(|()| new.sync()) {
            drop(new);
            self.fs.remove(first)?;
            return if e.kind() == io::ErrorKind::StorageFull {
                Ok(false)
            } else {
                Err(e)
            };
        }
        let old_first = std::mem::replace(&mut self.active_first, first);
        self.closed.push(old_first);
        self.active = new;
        self.active_len = record::MAGIC.len() as u64;
        Ok(true)
    }

    /// Deletes closed segments whose records are all below `low_water` (every record below it
    /// is in a published file). With `include_active`, the active segment goes too when it
    /// holds nothing at or above `low_water` (clean shutdown). Returns how many were deleted.
    pub fn release(&mut self, low_water: u64, include_active: bool) -> io::Result<usize> {
        let mut deleted = 0;
        while !self.closed.is_empty() {
            let next_first = self.closed.get(1).copied().unwrap_or(self.active_first);
            if next_first > low_water {
                break;
            }
            self.fs.remove(self.closed[0])?;
            self.closed.remove(0);
            deleted += 1;
        }
        if include_active
            && self.closed.is_empty()
            && self.staged.is_empty()
            && self.written_seq <= low_water
        {
            self.fs.remove(self.active_first)?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
