//! The few file operations the WAL needs, behind a trait so tests can swap in a file system
//! that forgets unsynced bytes at a simulated crash ([`mem::MemFs`]). [`DiskFs`] is the real
//! one: segment `{first_seq:020}.wal` files in one directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directory of segment files, named by the first sequence number they may hold.
pub trait WalFs: Send + 'static {
    /// An open segment being appended to.
    type File: SegmentFile;
    /// First sequence numbers of the existing segments, ascending.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates a new, empty segment and makes its directory entry durable.
    fn create(&self, first: u64) -> io::Result<Self::File>;
    /// Opens a segment for reading.
    fn open_read(&self, first: u64) -> io::Result<Box<dyn Read + Send>>;
    /// Deletes a segment.
    fn remove(&self, first: u64) -> io::Result<()>;
}

/// A segment open for appending.
pub trait SegmentFile: Send {
    /// Appends all of `buf` (may have written part of it on error).
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every appended byte durable (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes (undoes a partial append).
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// Segment files in a real directory.
#[derive(Debug)]
pub struct DiskFs {
    dir: PathBuf,
}

impl DiskFs {
    /// Uses (and creates) `dir`, readable by the service's user only (mode 0700; segments
    /// 0600): the log holds raw payloads and client ids, whoever may read the lake.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.wal"))
    }
}

impl WalFs for DiskFs {
    type File = File;

    fn list(&self) -> io::Result<Vec<u64>> {
        let mut firsts = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".wal").and_then(|n| n.parse().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        Ok(firsts)
    }

    fn create(&self, first: u64) -> io::Result<File> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(self.path(first))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(file)
    }

    fn open_read(&self, first: u64) -> io::Result<Box<dyn Read + Send>> {
        let file = File::open(self.path(first))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, file)))
    }

    fn remove(&self, first: u64) -> io::Result<()> {
        fs::remove_file(self.path(first))
    }
}

impl SegmentFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

#[cfg(test)]
pub mod mem {
    //! An in-memory [`WalFs`] that models what a crash keeps: synced bytes always, a prefix
    //! of the unsynced bytes at most (a torn write), and only directory entries that were
    //! made durable.

    use std::collections::BTreeMap;
    use std::io::{self, Read};
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::{SegmentFile, WalFs};

    #[derive(Debug, Default)]
    struct MemFile {
        synced: Vec<u8>,
        unsynced: Vec<u8>,
    }

    #[derive(Debug, Default)]
    struct State {
        files: BTreeMap<u64, MemFile>,
        /// Appends fail with "no space" while set.
        full: bool,
    }

    /// Shared in-memory directory; clones see the same files.
    #[derive(Clone, Debug, Default)]
    pub struct MemFs(Arc<Mutex<State>>);

    /// A segment of a [`MemFs`].
    #[derive(Debug)]
    pub struct MemSegment {
        fs: MemFs,
        first: u64,
    }

    impl MemFs {
        fn state(&self) -> MutexGuard<'_, State> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Simulates power loss: every file keeps its synced bytes plus the first
        /// `keep(unsynced_len)` unsynced ones.
        pub fn crash(&self, mut keep: impl FnMut(usize) -> usize) {
            for file in self.state().files.values_mut() {
                let n = keep(file.unsynced.len()).min(file.unsynced.len());
                let kept: Vec<u8> = file.unsynced.drain(..n).collect();
                file.synced.extend_from_slice(&kept);
                file.unsynced.clear();
            }
        }

        /// Makes appends fail with `StorageFull` (or succeed again).
        pub fn set_full(&self, full: bool) {
            self.state().full = full;
        }
    }

    impl WalFs for MemFs {
        type File = MemSegment;

        fn list(&self) -> io::Result<Vec<u64>> {
            Ok(self.state().files.keys().copied().collect())
        }

        fn create(&self, first: u64) -> io::Result<MemSegment> {
            let mut state = self.state();
            if state.files.contains_key(&first) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            state.files.insert(first, MemFile::default());
            Ok(MemSegment {
                fs: self.clone(),
                first,
            })
        }

        fn open_read(&self, first: u64) -> io::Result<Box<dyn Read + Send>> {
            let state = self.state();
            let file = state.files.get(&first).ok_or(io::ErrorKind::NotFound)?;
            let mut bytes = file.synced.clone();
            bytes.extend_from_slice(&file.unsynced);
            Ok(Box::new(io::Cursor::new(bytes)))
        }

        fn remove(&self, first: u64) -> io::Result<()> {
            self.state().files.remove(&first);
            Ok(())
        }
    }

    impl SegmentFile for MemSegment {
        fn append(&mut self, buf: &[u8]) -> io::Result<()> {
            let mut state = self.fs.state();
            if state.full {
                // Like a real disk: part of the write may land before the error.
                let file = state
                    .files
                    .get_mut(&self.first)
                    .ok_or(io::ErrorKind::NotFound)?;
                file.unsynced.extend_from_slice(&buf[..buf.len() / 2]);
                return Err(io::ErrorKind::StorageFull.into());
            }
            let file = state
                .files
                .get_mut(&self.first)
                .ok_or(io::ErrorKind::NotFound)?;
            file.unsynced.extend_from_slice(buf);
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut state = self.fs.state();
            let file = state
                .files
                .get_mut(&self.first)
                .ok_or(io::ErrorKind::NotFound)?;
            let pending = std::mem::take(&mut file.unsynced);
            file.synced.extend_from_slice(&pending);
            Ok(())
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            let mut state = self.fs.state();
            let file = state
                .files
                .get_mut(&self.first)
                .ok_or(io::ErrorKind::NotFound)?;
            let len = len as usize;
            if len <= file.synced.len() {
                file.synced.truncate(len);
                file.unsynced.clear();
            } else {
                file.unsynced.truncate(len - file.synced.len());
            }
            Ok(())
        }
    }
}
