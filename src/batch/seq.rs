//! Message sequence numbers, unique and increasing across restarts, so file names
//! (`{node}-{first}-{last}`) never collide with an earlier run's. Numbers are reserved in
//! blocks: the end of the current block is written (tmp → fsync → rename) to
//! `{data_dir}/seq.next` before any number of the block is used, so a crash skips at most the
//! rest of a block. The WAL (see ARCHITECTURE.md) will take this role over.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

/// Numbers reserved per write of the state file.
const BLOCK: u64 = 1 << 20;

/// Hands out sequence numbers.
#[derive(Debug)]
pub struct SeqAllocator {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

impl SeqAllocator {
    /// Reads `{data_dir}/seq.next` (0 when absent) and reserves the first block.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<Self> {
        let path = data_dir.join("seq.next");
        let next = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a number", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let reserved_until = next + BLOCK;
        write_state(&path, reserved_until)?;
        Ok(Self {
            path,
            next,
            reserved_until,
        })
    }

    /// The next number; reserves a new block (off the async workers) when the current one is used.
    pub async fn next(&mut self) -> std::io::Result<u64> {
        if self.next >= self.reserved_until {
            let until = self.next + BLOCK;
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || write_state(&path, until))
                .await
                .map_err(std::io::Error::other)??;
            self.reserved_until = until;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }
}

fn write_state(path: &PathBuf, value: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    writeln!(file, "{value}")?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbers_keep_increasing_across_a_restart() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut a = SeqAllocator::open(dir.path())?;
        assert_eq!(a.next().await?, 0);
        assert_eq!(a.next().await?, 1);
        drop(a);
        let mut b = SeqAllocator::open(dir.path())?;
        assert!(b.next().await? >= 2);
        Ok(())
    }
}
