//! The persistent queue directory belongs to one process at a time: a lock file in it,
//! locked (flock, released by the kernel when the process ends, even by SIGKILL) for as long
//! as the forwarder lives, holding the pid of its holder for the message a second process
//! gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name, beside the endpoints' subdirectories.
const LOCK_FILE: &str = "spanlens.lock";

/// The lock on a persistent queue directory; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DirectoryLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error(
        "the persistent queue directory {} is in use by another spanlens process{}; give each process its own forward.persistent.directory",
        .directory.display(),
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        directory: PathBuf,
        /// The holder's pid, when its lock file says it.
        holder: Option<u32>,
    },
    #[error("cannot lock the persistent queue directory {}: {source}", .directory.display())]
    Io {
        directory: PathBuf,
        source: io::Error,
    },
}

impl DirectoryLock {
    /// Creates `directory` if needed and locks it for this process, or says who holds it.
    pub(crate) fn acquire(directory: &Path) -> Result<DirectoryLock, LockError> {
        let io = |source| LockError::Io {
            directory: directory.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(directory).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(directory.join(LOCK_FILE))
            .map_err(io)?;
        let locked = file.try_lock();
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::InUse {
                    directory: directory.to_path_buf(),
                    holder: holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        Ok(DirectoryLock { _file: file })
    }
}

/// The pid a locked lock file holds (none while its holder has not written it yet).
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_directory_and_the_holder_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("spanlens-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DirectoryLock::acquire(&dir).expect("the first lock");
        let second = DirectoryLock::acquire(&dir).expect_err("the directory is locked");
        let message = second.to_string();
        assert!(
            message.contains(&dir.display().to_string())
                && message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        drop(first);
        DirectoryLock::acquire(&dir).expect("free again once dropped");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
