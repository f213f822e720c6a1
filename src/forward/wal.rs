//! Persistent write-ahead log of the requests queued for one downstream endpoint.
//!
//! The forwarding queue keeps its requests in memory; a [`Wal`] is only the crash copy, so that
//! what was accepted but not yet forwarded is sent again after a crash or a restart. Records are
//! opaque byte payloads.
//!
//! # On-disk format
//!
//! One directory per endpoint, holding:
//!
//! - segment files `<seq>.seg`, `<seq>` a 20-digit zero-padded sequence number that grows with
//!   every new segment. A segment is a run of records, each a 16-byte header followed by the
//!   payload. Header, all little-endian: magic `u32` (`0x1E9C5AF3`), payload length `u32`,
//!   CRC-32 (IEEE) of the payload `u32`, CRC-32 of the 12 header bytes before it `u32`. The header
//!   check means a damaged length is never trusted; the payload check catches damaged data.
//! - acknowledgement files `<seq>.ack`, one per segment that had a record acknowledged: an
//!   append-only list of the acknowledged records' byte offsets in the segment, `u64` each. A
//!   torn last entry (length not a multiple of 8) is ignored, and cut off before the next append.
//!
//! A process never appends to a segment written by an earlier one: [`Wal::open`] starts a new
//! segment (highest sequence number seen + 1) for its first append. Recovery reads the
//! segments in order, resynchronising after damage by scanning for the next position that
//! holds a valid header and payload. A segment whose valid records are all acknowledged is
//! deleted, segment file first, then its acknowledgement file (an acknowledgement file
//! without its segment is deleted at open), so that a crash in between cannot bring
//! acknowledged records back.
//!
//! Only one `Wal` may use a directory at a time; nothing here enforces it (the forwarder
//! locks the directory above, `super::lock`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// First four bytes of every record header (stored little-endian).
const MAGIC: u32 = 0x1E9C_5AF3;
/// Bytes of a record header: magic, payload length, payload CRC, header CRC.
const HEADER_LEN: usize = 16;
/// Bytes of the header covered by the header CRC.
const HEADER_CHECKED_LEN: usize = 12;
/// Bytes of one acknowledgement entry (a little-endian record offset).
const ACK_ENTRY_LEN: u64 = 8;
/// Digits of the zero-padded sequence number in file names.
const SEQ_DIGITS: usize = 20;
const SEGMENT_EXT: &str = "seg";
const ACK_EXT: &str = "ack";
/// Acknowledgement files kept open at once; others are reopened when needed.
const MAX_OPEN_ACK_FILES: usize = 16;
/// Capacity above which the record-encoding buffer is released after an append.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// Where a record lives; ids of one Wal are unique and ordered by append order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RecordId {
    /// Sequence number of the segment file.
    seq: u64,
    /// Byte offset of the record header in the segment file.
    offset: u64,
}

/// What `Wal::open` found on disk.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Valid records never acknowledged, in append order.
    pub(crate) records: Vec<(RecordId, Vec<u8>)>,
    /// Damaged regions skipped (a torn tail, a corrupt record or run of bytes): each counts once.
    pub(crate) skipped_regions: u64,
    /// Bytes in those regions.
    pub(crate) skipped_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    /// The log would exceed its size cap: refuse the data, nothing was written.
    #[error("the persistent queue is full ({used} of {cap} bytes used)")]
    Full { used: u64, cap: u64 },
    /// Writing failed (disk full, I/O error); nothing usable was written (a partial write is truncated away).
    #[error("cannot write to the persistent queue: {0}")]
    Io(#[from] std::io::Error),
}

/// A persistent, size-capped log of records, one directory per downstream endpoint.
pub(crate) struct Wal {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Every segment file this Wal knows of, the one being written included.
    segments: BTreeMap<u64, Segment>,
    /// The segment being written, created at the first append after open or a roll.
    active: Option<Active>,
    /// Sequence number of the next segment to create.
    next_seq: u64,
    /// Bytes of all segment and acknowledgement files.
    disk_bytes: u64,
    /// Acknowledgement files with an open handle in `segments`.
    open_ack_files: usize,
    /// Segments no longer written whose last appends have not been fsynced.
    unsynced_segments: BTreeSet<u64>,
    /// Files were created or deleted since the last sync.
    dir_dirty: bool,
    /// Encoding buffer of `append`, reused.
    buf: Vec<u8>,
}

/// The state of one segment file.
#[derive(Default)]
struct Segment {
    /// Bytes of the segment file.
    len: u64,
    /// Bytes of the acknowledgement file (0 when it does not exist).
    ack_len: u64,
    /// Offsets of the valid records not yet acknowledged.
    live: HashSet<u64>,
    /// Open handle of the acknowledgement file, in append mode.
    ack_file: Option<File>,
    /// The acknowledgement file was written since the last sync.
    ack_dirty: bool,
}

/// The segment being written.
struct Active {
    seq: u64,
    file: File,
    /// Written since the last sync.
    dirty: bool,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("segment_bytes", &self.segment_bytes)
            .field("segments", &self.segments.len())
            .field("active", &self.active.as_ref().map(|a| a.seq))
            .field("disk_bytes", &self.disk_bytes)
            .finish()
    }
}

impl Wal {
    /// Opens (creating it if needed) the log in `dir`, capped at `max_bytes` on disk, rolling to a new segment file after `segment_bytes`.
    /// Returns the records that were appended but never acknowledged (from any earlier process).
    ///
    /// Damaged bytes are skipped and counted in [`Recovered`]; segments without an
    /// unacknowledged valid record are deleted. Errors are I/O errors only (listing, reading or
    /// deleting files), never the content of the files.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> io::Result<(Wal, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut segment_seqs = BTreeSet::new();
        let mut ack_seqs = BTreeSet::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if let Some(seq) = parse_file_name(name, SEGMENT_EXT) {
                segment_seqs.insert(seq);
            } else if let Some(seq) = parse_file_name(name, ACK_EXT) {
                ack_seqs.insert(seq);
            }
        }
        let highest = segment_seqs.last().copied().max(ack_seqs.last().copied());
        // A file named after u64::MAX leaves no sequence number to create: appends then fail.
        let next_seq = highest.map_or(0, |seq| seq.saturating_add(1));

        let mut wal = Wal {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            segments: BTreeMap::new(),
            active: None,
            next_seq,
            disk_bytes: 0,
            open_ack_files: 0,
            unsynced_segments: BTreeSet::new(),
            dir_dirty: false,
            buf: Vec::new(),
        };
        let mut recovered = Recovered::default();

        // Acknowledgements of segments already deleted (a crash between the two deletions).
        for &seq in ack_seqs.difference(&segment_seqs) {
            remove_if_exists(&ack_path(dir, seq))?;
            wal.dir_dirty = true;
        }

        for &seq in &segment_seqs {
            let data = fs::read(segment_path(dir, seq))?;
            let (acked, ack_len) = if ack_seqs.contains(&seq) {
                let acks = fs::read(ack_path(dir, seq))?;
                let offsets: HashSet<u64> = acks
                    .chunks_exact(ACK_ENTRY_LEN as usize)
                    .filter_map(|entry| entry.try_into().ok().map(u64::from_le_bytes))
                    .collect();
                (offsets, acks.len() as u64)
            } else {
                (HashSet::new(), 0)
            };
            let scan = scan_segment(&data);
            recovered.skipped_regions += scan.skipped_regions;
            recovered.skipped_bytes += scan.skipped_bytes;
            let mut segment = Segment {
                len: data.len() as u64,
                ack_len,
                ..Segment::default()
            };
            for (offset, payload) in scan.records {
                if !acked.contains(&offset) {
                    segment.live.insert(offset);
                    recovered
                        .records
                        .push((RecordId { seq, offset }, payload.to_vec()));
                }
            }
            wal.disk_bytes = wal.disk_bytes.saturating_add(segment.len + segment.ack_len);
            wal.segments.insert(seq, segment);
            wal.delete_if_drained(seq)?;
        }
        Ok((wal, recovered))
    }

    /// Appends one record (write_all to the OS before returning; no fsync).
    ///
    /// Refuses with [`AppendError::Full`] when the record would take the log past its cap.
    /// On a write error the segment is cut back to its length before the append; if even that
    /// fails, the segment is closed and the next append starts a new one.
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<RecordId, AppendError> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record of the persistent queue is limited to 4 GiB",
            )
        })?;
        let size = HEADER_LEN as u64 + u64::from(len);
        if self.disk_bytes.saturating_add(size) > self.max_bytes {
            return Err(AppendError::Full {
                used: self.disk_bytes,
                cap: self.max_bytes,
            });
        }
        let roll = match &self.active {
            None => true,
            Some(active) => {
                let written = self.segments.get(&active.seq).map_or(0, |s| s.len);
                written > 0 && written.saturating_add(size) > self.segment_bytes
            }
        };
        if roll {
            self.roll()?;
        }

        self.buf.clear();
        self.buf.extend_from_slice(&encode_header(payload, len));
        self.buf.extend_from_slice(payload);
        let result = self.write_buffered_record(size);
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            self.buf = Vec::new();
        }
        result
    }

    /// Writes `self.buf` (one encoded record of `size` bytes) at the end of the active segment.
    fn write_buffered_record(&mut self, size: u64) -> Result<RecordId, AppendError> {
        let (Some(active), segments) = (self.active.as_mut(), &mut self.segments) else {
            return Err(io::Error::other("the persistent queue has no segment to write").into());
        };
        let seq = active.seq;
        let Some(segment) = segments.get_mut(&seq) else {
            return Err(io::Error::other("the persistent queue lost its segment").into());
        };
        let offset = segment.len;
        match active.file.write_all(&self.buf) {
            Ok(()) => {
                active.dirty = true;
                segment.len += size;
                segment.live.insert(offset);
                self.disk_bytes = self.disk_bytes.saturating_add(size);
                Ok(RecordId { seq, offset })
            }
            Err(err) => {
                if active.file.set_len(offset).is_err() {
                    // The segment may end in part of this record: stop writing it, count what
                    // it holds, and let recovery skip the partial record.
                    let on_disk = active
                        .file
                        .metadata()
                        .map_or(offset.saturating_add(size), |m| m.len());
                    self.disk_bytes = self
                        .disk_bytes
                        .saturating_sub(segment.len)
                        .saturating_add(on_disk);
                    segment.len = on_disk;
                    self.retire_active();
                    // Best effort: a segment left undeleted is retried at the next roll.
                    let _ = self.delete_if_drained(seq);
                }
                Err(err.into())
            }
        }
    }

    /// Marks a record delivered (or deliberately dropped). A segment file is deleted once every valid record in it is acknowledged and it is not the segment being written.
    ///
    /// Acknowledging a record twice, or an id this Wal does not hold, does nothing. An error
    /// after the acknowledgement was written (deleting the drained segment failed) leaves the
    /// record acknowledged; the deletion is retried when the log next rolls to a new segment.
    pub(crate) fn ack(&mut self, id: RecordId) -> io::Result<()> {
        let live = self
            .segments
            .get(&id.seq)
            .is_some_and(|segment| segment.live.contains(&id.offset));
        if !live {
            return Ok(());
        }
        // Forget the record even when its ack cannot be written (a full disk): deleting the
        // drained segment supersedes every ack, and keeping it would pin the segment's space
        // for the life of the process. At worst the record is sent again after a restart.
        let written = self.write_ack(id);
        if let Some(segment) = self.segments.get_mut(&id.seq) {
            segment.live.remove(&id.offset);
        }
        let deleted = self.delete_if_drained(id.seq);
        written.and(deleted)
    }

    /// fsyncs the segment being written and the acknowledgement files.
    ///
    /// Also the segments closed since the last sync, and the directory (file creations and
    /// deletions) on Unix.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if let Some(active) = self.active.as_mut()
            && active.dirty
        {
            active.file.sync_data()?;
            active.dirty = false;
        }
        while let Some(seq) = self.unsynced_segments.first().copied() {
            if self.segments.contains_key(&seq) {
                sync_path(&segment_path(&self.dir, seq))?;
            }
            self.unsynced_segments.remove(&seq);
        }
        for (&seq, segment) in &mut self.segments {
            if !segment.ack_dirty {
                continue;
            }
            match &segment.ack_file {
                Some(file) => file.sync_data()?,
                None => sync_path(&ack_path(&self.dir, seq))?,
            }
            segment.ack_dirty = false;
        }
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Bytes the log uses on disk now (segments + ack files).
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Starts a new segment file and makes it the one being written.
    fn roll(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq = seq.checked_add(1).ok_or_else(|| {
            io::Error::other("the persistent queue ran out of segment sequence numbers")
        })?;
        // create_new: never write into a file this Wal does not know of.
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(segment_path(&self.dir, seq))?;
        self.dir_dirty = true;
        self.retire_active();
        self.segments.insert(seq, Segment::default());
        self.active = Some(Active {
            seq,
            file,
            dirty: false,
        });
        // The closed segment may be drained already, and earlier deletions may have failed.
        let drained: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&s, segment)| s != seq && segment.live.is_empty())
            .map(|(&s, _)| s)
            .collect();
        for s in drained {
            // Best effort: this append does not depend on it; retried at the next roll.
            let _ = self.delete_if_drained(s);
        }
        Ok(())
    }

    /// Stops writing the active segment (it stays on disk while it has live records).
    fn retire_active(&mut self) {
        if let Some(active) = self.active.take()
            && active.dirty
        {
            self.unsynced_segments.insert(active.seq);
        }
    }

    /// Deletes segment `seq` if it has no unacknowledged record and is not being written.
    ///
    /// On error the segment stays known (and counted in `disk_bytes`) with no live record.
    fn delete_if_drained(&mut self, seq: u64) -> io::Result<()> {
        if self.active.as_ref().is_some_and(|active| active.seq == seq) {
            return Ok(());
        }
        let Some(segment) = self.segments.get_mut(&seq) else {
            return Ok(());
        };
        if !segment.live.is_empty() {
            return Ok(());
        }
        if segment.ack_file.take().is_some() {
            self.open_ack_files = self.open_ack_files.saturating_sub(1);
        }
        // Segment first: without it, its acknowledgements mean nothing.
        remove_if_exists(&segment_path(&self.dir, seq))?;
        self.dir_dirty = true;
        self.disk_bytes = self.disk_bytes.saturating_sub(segment.len);
        segment.len = 0;
        remove_if_exists(&ack_path(&self.dir, seq))?;
        self.disk_bytes = self.disk_bytes.saturating_sub(segment.ack_len);
        self.segments.remove(&seq);
        self.unsynced_segments.remove(&seq);
        Ok(())
    }

    /// Appends the acknowledgement of `id` to its segment's acknowledgement file.
    fn write_ack(&mut self, id: RecordId) -> io::Result<()> {
        let needs_open = self
            .segments
            .get(&id.seq)
            .is_some_and(|segment| segment.ack_file.is_none());
        if needs_open {
            if self.open_ack_files >= MAX_OPEN_ACK_FILES {
                self.close_an_ack_file(id.seq);
            }
            self.open_ack_file(id.seq)?;
        }
        let Some(segment) = self.segments.get_mut(&id.seq) else {
            return Ok(());
        };
        let Some(file) = segment.ack_file.as_mut() else {
            return Err(io::Error::other(
                "the acknowledgement file of the persistent queue is not open",
            ));
        };
        match file.write_all(&id.offset.to_le_bytes()) {
            Ok(()) => {
                segment.ack_len += ACK_ENTRY_LEN;
                segment.ack_dirty = true;
                self.disk_bytes = self.disk_bytes.saturating_add(ACK_ENTRY_LEN);
                Ok(())
            }
            Err(err) => {
                if file.set_len(segment.ack_len).is_err() {
                    // A torn entry may remain: count it, and close the file so that the next
                    // acknowledgement reopens it and cuts the torn entry off first.
                    if let Ok(meta) = file.metadata() {
                        self.disk_bytes = self
                            .disk_bytes
                            .saturating_sub(segment.ack_len)
                            .saturating_add(meta.len());
                        segment.ack_len = meta.len();
                    }
                    segment.ack_file = None;
                    self.open_ack_files = self.open_ack_files.saturating_sub(1);
                }
                Err(err)
            }
        }
    }

    /// Opens (creating it if needed) the acknowledgement file of segment `seq`, cutting off a
    /// torn last entry so that new entries stay aligned.
    fn open_ack_file(&mut self, seq: u64) -> io::Result<()> {
        let Some(segment) = self.segments.get_mut(&seq) else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(ack_path(&self.dir, seq))?;
        self.dir_dirty = true;
        let on_disk = file.metadata()?.len();
        self.disk_bytes = self
            .disk_bytes
            .saturating_sub(segment.ack_len)
            .saturating_add(on_disk);
        segment.ack_len = on_disk;
        let aligned = on_disk - on_disk % ACK_ENTRY_LEN;
        if aligned != on_disk {
            file.set_len(aligned)?;
            self.disk_bytes = self.disk_bytes.saturating_sub(on_disk - aligned);
            segment.ack_len = aligned;
        }
        segment.ack_file = Some(file);
        self.open_ack_files += 1;
        Ok(())
    }

    /// Closes one open acknowledgement file other than segment `keep`'s (a later sync reopens
    /// it if it has unsynced entries).
    fn close_an_ack_file(&mut self, keep: u64) {
        let victim = self
            .segments
            .iter_mut()
            .find(|(seq, segment)| **seq != keep && segment.ack_file.is_some());
        if let Some((_, segment)) = victim {
            segment.ack_file = None;
            self.open_ack_files = self.open_ack_files.saturating_sub(1);
        }
    }
}

/// The valid records of a segment and the damage between them.
#[derive(Debug, Default)]
struct Scan<'a> {
    /// (offset, payload) of every valid record, in file order.
    records: Vec<(u64, &'a [u8])>,
    skipped_regions: u64,
    skipped_bytes: u64,
}

/// Reads the records of a segment file, skipping damaged runs of bytes: after a position that
/// does not hold a valid record, the next position holding one is found by scanning for the
/// magic number and checking header and payload.
fn scan_segment(data: &[u8]) -> Scan<'_> {
    let mut scan = Scan::default();
    let mut pos = 0usize;
    let mut damaged_from: Option<usize> = None;
    while pos < data.len() {
        match record_at(data, pos) {
            Some(payload) => {
                if let Some(start) = damaged_from.take() {
                    scan.skipped_regions += 1;
                    scan.skipped_bytes += (pos - start) as u64;
                }
                scan.records.push((pos as u64, payload));
                pos += HEADER_LEN + payload.len();
            }
            None => {
                damaged_from.get_or_insert(pos);
                pos = find_magic(data, pos + 1).unwrap_or(data.len());
            }
        }
    }
    if let Some(start) = damaged_from {
        scan.skipped_regions += 1;
        scan.skipped_bytes += (data.len() - start) as u64;
    }
    scan
}

/// The payload of the valid record whose header starts at `pos`, if there is one.
fn record_at(data: &[u8], pos: usize) -> Option<&[u8]> {
    let header = data.get(pos..pos.checked_add(HEADER_LEN)?)?;
    let word = |at: usize| -> Option<u32> {
        let bytes = header.get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    };
    if word(0)? != MAGIC || crc32(header.get(..HEADER_CHECKED_LEN)?) != word(12)? {
        return None;
    }
    let len = usize::try_from(word(4)?).ok()?;
    let start = pos + HEADER_LEN;
    let payload = data.get(start..start.checked_add(len)?)?;
    (crc32(payload) == word(8)?).then_some(payload)
}

/// The first position at or after `from` where the magic number starts.
fn find_magic(data: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    data.get(from..)?
        .windows(magic.len())
        .position(|window| window == magic)
        .map(|at| from + at)
}

/// The header of a record holding `payload` (of length `len`).
fn encode_header(payload: &[u8], len: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..12].copy_from_slice(&crc32(payload).to_le_bytes());
    let check = crc32(&header[..HEADER_CHECKED_LEN]);
    header[12..16].copy_from_slice(&check.to_le_bytes());
    header
}

/// Lookup table of the reflected CRC-32 (IEEE 802.3) polynomial.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE, as in zlib and gzip) of `data`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The sequence number of a file named `<20 digits>.<ext>`.
fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != SEQ_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:0SEQ_DIGITS$}.{SEGMENT_EXT}"))
}

fn ack_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:0SEQ_DIGITS$}.{ACK_EXT}"))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// fsyncs the file at `path`, if it still exists.
fn sync_path(path: &Path) -> io::Result<()> {
    match OpenOptions::new().append(true).open(path) {
        Ok(file) => file.sync_data(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// fsyncs the directory, so that created and deleted files survive a power loss.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("spanlens-wal-{}-{name}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// xorshift64*: deterministic test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Distinct payload number `i` of `len` bytes.
    fn payload(i: u64, len: usize) -> Vec<u8> {
        Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).bytes(len)
    }

    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> (Wal, Recovered) {
        Wal::open(dir, max_bytes, segment_bytes).expect("open the wal")
    }

    /// seq → length of the files with extension `ext`.
    fn files(dir: &Path, ext: &str) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if let Some(seq) = parse_file_name(&name, ext) {
                out.insert(seq, entry.metadata().unwrap().len());
            }
        }
        out
    }

    fn dir_bytes(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum()
    }

    fn record_size(payload: &[u8]) -> u64 {
        (HEADER_LEN + payload.len()) as u64
    }

    /// Appends `payloads`, returning them with their ids.
    fn append_all(wal: &mut Wal, payloads: Vec<Vec<u8>>) -> Vec<(RecordId, Vec<u8>)> {
        payloads
            .into_iter()
            .map(|p| (wal.append(&p).expect("append"), p))
            .collect()
    }

    fn encoded(payload: &[u8]) -> Vec<u8> {
        let mut out = encode_header(payload, payload.len() as u32).to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn crc32_matches_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn wal_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Wal>();
        assert_send::<std::sync::Mutex<Wal>>();
    }

    #[test]
    fn reopen_returns_exactly_the_unacked_records_and_deletes_drained_segments() {
        let tmp = TempDir::new("reopen");
        let dir = tmp.path();
        let (mut wal, recovered) = open(dir, 1 << 30, 4096);
        assert!(recovered.records.is_empty());
        let mut rng = Rng(7);
        let payloads = (0..1000)
            .map(|i| payload(i, rng.below(400) as usize))
            .collect();
        let written = append_all(&mut wal, payloads);
        let seqs: BTreeSet<u64> = written.iter().map(|(id, _)| id.seq).collect();
        assert!(seqs.len() > 10, "only {} segments", seqs.len());
        assert_eq!(files(dir, SEGMENT_EXT).len(), seqs.len());
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));

        // Ack the first 400 records (whole segments) and every third record after them.
        let is_acked = |i: usize| i < 400 || i.is_multiple_of(3);
        for (i, (id, _)) in written.iter().enumerate() {
            if is_acked(i) {
                wal.ack(*id).unwrap();
            }
        }
        // Acking again, or an id that never existed, changes nothing.
        let before = wal.disk_bytes();
        wal.ack(written[0].0).unwrap();
        wal.ack(RecordId {
            seq: written[500].0.seq,
            offset: 3,
        })
        .unwrap();
        assert_eq!(wal.disk_bytes(), before);
        wal.sync().unwrap();
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));

        let last_seq = *seqs.last().unwrap();
        let unacked_seqs: BTreeSet<u64> = written
            .iter()
            .enumerate()
            .filter(|&(i, _)| !is_acked(i))
            .map(|(_, (id, _))| id.seq)
            .collect();
        let drained: Vec<u64> = seqs.difference(&unacked_seqs).copied().collect();
        assert!(
            drained.len() >= 5,
            "only {} drained segments",
            drained.len()
        );
        let on_disk = files(dir, SEGMENT_EXT);
        for seq in &seqs {
            let expected = unacked_seqs.contains(seq) || *seq == last_seq;
            assert_eq!(on_disk.contains_key(seq), expected, "segment {seq}");
        }
        drop(wal);

        let (mut wal, recovered) = open(dir, 1 << 30, 4096);
        let expected: Vec<(RecordId, Vec<u8>)> = written
            .iter()
            .enumerate()
            .filter(|&(i, _)| !is_acked(i))
            .map(|(_, record)| record.clone())
            .collect();
        assert_eq!(recovered.records.len(), expected.len());
        assert!(recovered.records == expected, "recovered records differ");
        assert_eq!(recovered.skipped_regions, 0);
        assert_eq!(recovered.skipped_bytes, 0);
        let on_disk: BTreeSet<u64> = files(dir, SEGMENT_EXT).into_keys().collect();
        assert_eq!(on_disk, unacked_seqs);
        let acks: BTreeSet<u64> = files(dir, ACK_EXT).into_keys().collect();
        assert!(acks.is_subset(&on_disk), "ack files {acks:?}");
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));

        // New appends go to a new segment after all the old ones.
        let id = wal.append(b"after").unwrap();
        assert!(id.seq > last_seq);
        assert_eq!(id.offset, 0);
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));
    }

    #[test]
    fn torn_tail_loses_only_the_last_record() {
        for (case, cut_in_record) in [("payload", None), ("header", Some(5u64))] {
            let tmp = TempDir::new(&format!("torn-{case}"));
            let dir = tmp.path();
            let (mut wal, _) = open(dir, 1 << 30, 2048);
            let payloads = (0..60).map(|i| payload(i, 40 + i as usize * 3)).collect();
            let written = append_all(&mut wal, payloads);
            drop(wal);

            let (last_id, last_payload) = written.last().unwrap().clone();
            let cut = cut_in_record.unwrap_or(HEADER_LEN as u64 + last_payload.len() as u64 / 2);
            let path = segment_path(dir, last_id.seq);
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(last_id.offset + cut).unwrap();
            drop(file);

            let (mut wal, recovered) = open(dir, 1 << 30, 2048);
            assert!(recovered.records == written[..written.len() - 1], "{case}");
            assert_eq!(recovered.skipped_regions, 1, "{case}");
            assert_eq!(recovered.skipped_bytes, cut, "{case}");
            assert_eq!(wal.disk_bytes(), dir_bytes(dir));

            // Appending never continues the damaged segment; the damage stays counted.
            let id = wal.append(b"next").unwrap();
            assert!(id.seq > last_id.seq);
            drop(wal);
            let (_, recovered) = open(dir, 1 << 30, 2048);
            assert_eq!(recovered.records.len(), written.len());
            assert_eq!(recovered.records.last().unwrap().1, b"next");
            assert_eq!(recovered.skipped_regions, 1);
        }
    }

    /// Writes three segments of records, applies `damage` to the header or payload of a record
    /// in the middle of the second segment, reopens: only that record is lost.
    fn check_single_corruption(name: &str, damage: impl Fn(&mut Vec<u8>, usize, usize)) {
        let tmp = TempDir::new(name);
        let dir = tmp.path();
        let (mut wal, _) = open(dir, 1 << 30, 2048);
        let payloads = (0..60)
            .map(|i| payload(i, 20 + (i as usize * 37) % 180))
            .collect();
        let written = append_all(&mut wal, payloads);
        drop(wal);

        let seqs: Vec<u64> = files(dir, SEGMENT_EXT).into_keys().collect();
        assert!(seqs.len() >= 3);
        let second: Vec<usize> = (0..written.len())
            .filter(|&i| written[i].0.seq == seqs[1])
            .collect();
        assert!(second.len() >= 3);
        let victim = second[second.len() / 2];
        let (id, victim_payload) = &written[victim];
        let path = segment_path(dir, id.seq);
        let mut data = fs::read(&path).unwrap();
        damage(&mut data, id.offset as usize, victim_payload.len());
        fs::write(&path, &data).unwrap();

        let (wal, recovered) = open(dir, 1 << 30, 2048);
        let mut expected = written.clone();
        expected.remove(victim);
        assert_eq!(recovered.records.len(), expected.len(), "{name}");
        assert!(
            recovered.records == expected,
            "{name}: recovered records differ"
        );
        assert_eq!(recovered.skipped_regions, 1, "{name}");
        assert_eq!(
            recovered.skipped_bytes,
            record_size(victim_payload),
            "{name}"
        );
        assert_eq!(wal.disk_bytes(), dir_bytes(dir), "{name}");
    }

    #[test]
    fn corrupt_payload_skips_only_that_record() {
        check_single_corruption("payload-flip", |data, offset, len| {
            data[offset + HEADER_LEN + len / 2] ^= 0x01;
        });
        check_single_corruption("payload-last-byte", |data, offset, len| {
            data[offset + HEADER_LEN + len - 1] ^= 0x80;
        });
        check_single_corruption("payload-crc", |data, offset, _| {
            data[offset + 9] ^= 0x10;
        });
    }

    #[test]
    fn corrupt_length_field_resynchronises() {
        let set_len = |value: fn(u32) -> u32| {
            move |data: &mut Vec<u8>, offset: usize, _len: usize| {
                let field = offset + 4..offset + 8;
                let old = u32::from_le_bytes(data[field.clone()].try_into().unwrap());
                data[field].copy_from_slice(&value(old).to_le_bytes());
            }
        };
        check_single_corruption("len-plus-one", set_len(|len| len + 1));
        check_single_corruption("len-minus-one", set_len(|len| len - 1));
        check_single_corruption("len-zero", set_len(|_| 0));
        check_single_corruption("len-max", set_len(|_| u32::MAX));
        check_single_corruption("len-high-bit", set_len(|len| len | 0x8000_0000));
        // Swallowing exactly the next record (header + payload of about the same size).
        check_single_corruption("len-swallow", set_len(|len| len * 2 + HEADER_LEN as u32));
        check_single_corruption("magic", |data, offset, _| data[offset] ^= 0xFF);
        check_single_corruption("header-crc", |data, offset, _| data[offset + 14] ^= 0x04);
    }

    #[test]
    fn garbage_segment_is_counted_and_the_others_recovered() {
        let tmp = TempDir::new("garbage");
        let dir = tmp.path();
        let (mut wal, _) = open(dir, 1 << 30, 1024);
        let payloads = (0..40).map(|i| payload(i, 100)).collect();
        let written = append_all(&mut wal, payloads);
        drop(wal);
        let seqs: Vec<u64> = files(dir, SEGMENT_EXT).into_keys().collect();
        assert!(seqs.len() >= 3);
        let garbage_seq = seqs[1];
        let garbage = Rng(99).bytes(5000);
        fs::write(segment_path(dir, garbage_seq), &garbage).unwrap();
        // An ack file of random bytes for the garbage segment.
        fs::write(ack_path(dir, garbage_seq), Rng(5).bytes(77)).unwrap();
        // An empty segment, and files that are not the wal's.
        let empty_seq = seqs.last().unwrap() + 1;
        fs::write(segment_path(dir, empty_seq), b"").unwrap();
        fs::write(dir.join("notes.txt"), b"not a segment").unwrap();
        fs::write(dir.join("12.seg"), b"badly named").unwrap();

        let (mut wal, recovered) = open(dir, 1 << 30, 1024);
        let expected: Vec<_> = written
            .iter()
            .filter(|(id, _)| id.seq != garbage_seq)
            .cloned()
            .collect();
        assert!(recovered.records == expected, "recovered records differ");
        assert_eq!(recovered.skipped_regions, 1);
        assert_eq!(recovered.skipped_bytes, garbage.len() as u64);
        // Neither the garbage nor the empty segment holds a record: both are gone.
        let on_disk = files(dir, SEGMENT_EXT);
        assert!(!on_disk.contains_key(&garbage_seq));
        assert!(!on_disk.contains_key(&empty_seq));
        assert!(!ack_path(dir, garbage_seq).exists());
        assert!(dir.join("notes.txt").exists());
        // disk_bytes counts the wal's files only.
        let foreign = ("not a segment".len() + "badly named".len()) as u64;
        assert_eq!(wal.disk_bytes() + foreign, dir_bytes(dir));
        let id = wal.append(b"x").unwrap();
        assert!(id.seq > empty_seq);
    }

    #[test]
    fn adversarial_bytes_do_not_panic() {
        // Magic numbers everywhere, headers with a valid header check but lengths past the end,
        // valid records cut short, between valid records.
        let mut rng = Rng(3);
        let mut data = Vec::new();
        let good = [encoded(b"first"), encoded(b""), encoded(&[0xAB; 300])];
        data.extend_from_slice(&good[0]);
        for _ in 0..200 {
            data.extend_from_slice(&MAGIC.to_le_bytes());
            let skip = rng.below(20) as usize;
            let bytes = rng.bytes(skip);
            data.extend_from_slice(&bytes);
        }
        let mut lying = encode_header(&[], u32::MAX).to_vec();
        lying.extend_from_slice(b"short");
        data.extend_from_slice(&lying);
        data.extend_from_slice(&good[1]);
        data.extend_from_slice(&good[2][..good[2].len() - 1]);
        data.extend_from_slice(&good[2]);
        data.extend_from_slice(&MAGIC.to_le_bytes()[..3]);

        let scan = scan_segment(&data);
        let payloads: Vec<&[u8]> = scan.records.iter().map(|&(_, p)| p).collect();
        assert_eq!(payloads, [&b"first"[..], b"", &[0xAB; 300]]);
        // The run of magic numbers and the lying header, the cut-short record, the tail.
        assert_eq!(scan.skipped_regions, 3);
        let good_bytes: usize = good.iter().map(Vec::len).sum();
        assert_eq!(scan.skipped_bytes, (data.len() - good_bytes) as u64);

        // Every prefix and single-byte damage of a small segment: no panic, bytes add up.
        let mut small = Vec::new();
        for i in 0..4 {
            small.extend_from_slice(&encoded(&payload(i, i as usize * 5)));
        }
        for end in 0..=small.len() {
            let scan = scan_segment(&small[..end]);
            let valid: u64 = scan.records.iter().map(|(_, p)| record_size(p)).sum();
            assert_eq!(valid + scan.skipped_bytes, end as u64);
        }
        for at in 0..small.len() {
            let mut damaged = small.clone();
            damaged[at] ^= 0x5A;
            let scan = scan_segment(&damaged);
            assert_eq!(scan.records.len(), 3, "byte {at}");
            assert_eq!(scan.skipped_regions, 1, "byte {at}");
        }

        // The same through open, with a segment that is all magic numbers.
        let tmp = TempDir::new("adversarial");
        let dir = tmp.path();
        fs::create_dir_all(dir).unwrap();
        fs::write(segment_path(dir, 4), &data).unwrap();
        fs::write(segment_path(dir, 5), MAGIC.to_le_bytes().repeat(1000)).unwrap();
        let (_, recovered) = open(dir, 1 << 30, 1024);
        assert_eq!(recovered.records.len(), 3);
        assert_eq!(recovered.skipped_regions, 4);
    }

    #[test]
    fn cap_refuses_appends_until_segments_are_deleted() {
        let tmp = TempDir::new("cap");
        let dir = tmp.path();
        let record = 116u64; // 100-byte payloads
        let cap = record * 20 + 50;
        let (mut wal, _) = open(dir, cap, record * 4);
        let mut ids = Vec::new();
        let full = loop {
            match wal.append(&payload(ids.len() as u64, 100)) {
                Ok(id) => ids.push(id),
                Err(err) => break err,
            }
            assert!(ids.len() <= 20);
        };
        assert_eq!(ids.len(), 20);
        assert!(
            matches!(full, AppendError::Full { used, cap: c } if used == record * 20 && c == cap),
            "{full:?}"
        );
        let listing = (files(dir, SEGMENT_EXT), files(dir, ACK_EXT));
        let used = dir_bytes(dir);
        for _ in 0..3 {
            assert!(matches!(
                wal.append(&[1; 100]),
                Err(AppendError::Full { .. })
            ));
        }
        // A record larger than the cap never goes in.
        assert!(matches!(
            wal.append(&vec![0; cap as usize]),
            Err(AppendError::Full { .. })
        ));
        assert_eq!((files(dir, SEGMENT_EXT), files(dir, ACK_EXT)), listing);
        assert_eq!(dir_bytes(dir), used);
        assert_eq!(wal.disk_bytes(), used);

        // Acking part of a segment frees nothing (the ack file even grows).
        wal.ack(ids[5]).unwrap();
        assert_eq!(wal.disk_bytes(), used + 8);
        assert!(matches!(
            wal.append(&[1; 100]),
            Err(AppendError::Full { .. })
        ));
        // Acking the whole first segment deletes it and makes room.
        for id in &ids[..4] {
            wal.ack(*id).unwrap();
        }
        assert!(!segment_path(dir, ids[0].seq).exists());
        assert_eq!(wal.disk_bytes(), used + 8 - record * 4);
        let mut more = 0;
        while wal.append(&[2; 100]).is_ok() {
            more += 1;
            assert!(wal.disk_bytes() <= cap);
        }
        assert_eq!(more, 4);
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));
        drop(wal);
        let (_, recovered) = open(dir, cap, record * 4);
        assert_eq!(recovered.records.len(), 20 - 5 + 4);
    }

    #[test]
    fn torn_ack_entry_is_tolerated() {
        let tmp = TempDir::new("torn-ack");
        let dir = tmp.path();
        let (mut wal, _) = open(dir, 1 << 30, 1 << 20);
        let written = append_all(&mut wal, (0..10).map(|i| payload(i, 30)).collect());
        for (id, _) in &written[..3] {
            wal.ack(*id).unwrap();
        }
        drop(wal);
        let ack = ack_path(dir, written[0].0.seq);
        assert_eq!(fs::metadata(&ack).unwrap().len(), 24);
        // Half of the entry acknowledging record 3.
        let mut file = OpenOptions::new().append(true).open(&ack).unwrap();
        file.write_all(&written[3].0.offset.to_le_bytes()[..3])
            .unwrap();
        drop(file);

        let (mut wal, recovered) = open(dir, 1 << 30, 1 << 20);
        assert!(
            recovered.records == written[3..],
            "recovered records differ"
        );
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));
        // Acknowledgements after the torn entry still count.
        wal.ack(written[3].0).unwrap();
        wal.ack(written[7].0).unwrap();
        wal.sync().unwrap();
        assert_eq!(fs::metadata(&ack).unwrap().len(), 40);
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));
        drop(wal);

        let (_, recovered) = open(dir, 1 << 30, 1 << 20);
        let expected: Vec<_> = [4, 5, 6, 8, 9]
            .iter()
            .map(|&i| written[i].clone())
            .collect();
        assert!(recovered.records == expected, "recovered records differ");
    }

    #[test]
    fn active_segment_is_kept_until_rolled_or_reopened() {
        let tmp = TempDir::new("active");
        let dir = tmp.path();
        let (mut wal, _) = open(dir, 1 << 30, 100);
        let a = wal.append(&[1; 60]).unwrap();
        wal.ack(a).unwrap();
        // Fully acked but still being written.
        assert!(segment_path(dir, a.seq).exists());
        let b = wal.append(&[2; 60]).unwrap();
        assert_ne!(a.seq, b.seq);
        assert!(!segment_path(dir, a.seq).exists());
        assert!(!ack_path(dir, a.seq).exists());
        wal.ack(b).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.disk_bytes(), dir_bytes(dir));
        drop(wal);
        let (wal, recovered) = open(dir, 1 << 30, 100);
        assert!(recovered.records.is_empty());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 0);
        assert_eq!(wal.disk_bytes(), 0);
    }

    #[test]
    fn orphan_ack_file_is_removed_and_its_number_not_reused() {
        let tmp = TempDir::new("orphan");
        let dir = tmp.path();
        fs::create_dir_all(dir).unwrap();
        fs::write(ack_path(dir, 41), 0u64.to_le_bytes()).unwrap();
        let (mut wal, recovered) = open(dir, 1 << 30, 100);
        assert!(recovered.records.is_empty());
        assert!(!ack_path(dir, 41).exists());
        let id = wal.append(b"fresh").unwrap();
        assert_eq!(id.seq, 42);
        drop(wal);
        let (_, recovered) = open(dir, 1 << 30, 100);
        assert_eq!(recovered.records, vec![(id, b"fresh".to_vec())]);
    }

    #[test]
    fn many_ack_files_open_at_once_are_bounded() {
        let tmp = TempDir::new("many-acks");
        let dir = tmp.path();
        // Two records per segment: ack one of the two in each of 40 segments.
        let (mut wal, _) = open(dir, 1 << 30, 52);
        let written = append_all(&mut wal, (0..80).map(|i| payload(i, 10)).collect());
        for pair in written.chunks(2) {
            assert_eq!(pair[0].0.seq, pair[1].0.seq);
            wal.ack(pair[0].0).unwrap();
            assert!(wal.open_ack_files <= MAX_OPEN_ACK_FILES);
        }
        wal.sync().unwrap();
        assert!(wal.segments.values().all(|s| !s.ack_dirty));
        drop(wal);
        let (_, recovered) = open(dir, 1 << 30, 52);
        let expected: Vec<_> = written.iter().skip(1).step_by(2).cloned().collect();
        assert!(recovered.records == expected, "recovered records differ");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Ack(usize),
        AckAgain(usize),
        Sync,
        Reopen,
        /// Kill, cut this many bytes (modulo its length + 1) off the newest segment, reopen.
        TruncateTail(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..300).prop_map(Op::Append),
            5 => any::<usize>().prop_map(Op::Ack),
            1 => any::<usize>().prop_map(Op::AckAgain),
            1 => Just(Op::Sync),
            2 => Just(Op::Reopen),
            2 => any::<u64>().prop_map(Op::TruncateTail),
        ]
    }

    /// What a reopen of the model test must find.
    fn check_reopened(
        dir: &Path,
        recovered: &Recovered,
        live: &[(RecordId, Vec<u8>)],
        cut_mid_record: bool,
        ever_damaged: bool,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(&recovered.records[..], live);
        if cut_mid_record {
            prop_assert!(recovered.skipped_regions >= 1);
        }
        if !ever_damaged {
            prop_assert_eq!(recovered.skipped_regions, 0);
            prop_assert_eq!(recovered.skipped_bytes, 0);
        }
        // Open deletes every segment without a live record, and orphan ack files.
        let seg_seqs: BTreeSet<u64> = files(dir, SEGMENT_EXT).into_keys().collect();
        let live_seqs: BTreeSet<u64> = live.iter().map(|(id, _)| id.seq).collect();
        prop_assert_eq!(&seg_seqs, &live_seqs);
        let ack_seqs: BTreeSet<u64> = files(dir, ACK_EXT).into_keys().collect();
        prop_assert!(ack_seqs.is_subset(&seg_seqs));
        Ok(())
    }

    /// After a reopen, ids of deleted segments may be reused by new records: the model forgets
    /// them (a caller never keeps ids across processes).
    fn forget_deleted(dir: &Path, acked: &mut Vec<RecordId>, sizes: &mut BTreeMap<RecordId, u64>) {
        let on_disk = files(dir, SEGMENT_EXT);
        acked.clear();
        sizes.retain(|id, _| on_disk.contains_key(&id.seq));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn matches_an_in_memory_model(
            ops in proptest::collection::vec(op(), 1..80),
            segment_bytes in 0u64..1500,
            max_bytes in 100u64..8000,
        ) {
            let tmp = TempDir::new("model");
            let dir = tmp.path();
            let (mut wal, recovered) = Wal::open(dir, max_bytes, segment_bytes).unwrap();
            prop_assert!(recovered.records.is_empty());
            // Unacknowledged records, in append order.
            let mut live: Vec<(RecordId, Vec<u8>)> = Vec::new();
            let mut acked: Vec<RecordId> = Vec::new();
            // Size of every record ever written.
            let mut sizes: BTreeMap<RecordId, u64> = BTreeMap::new();
            let mut last_id: Option<RecordId> = None;
            let mut damaged = false;
            let mut ever_acked = false;
            let mut counter = 0u64;

            for op in ops {
                match op {
                    Op::Append(len) => {
                        counter += 1;
                        let data = payload(counter, len);
                        let size = record_size(&data);
                        let before = wal.disk_bytes();
                        match wal.append(&data) {
                            Ok(id) => {
                                prop_assert!(before + size <= max_bytes);
                                prop_assert!(last_id.is_none_or(|last| id > last));
                                last_id = Some(id);
                                sizes.insert(id, size);
                                live.push((id, data));
                            }
                            Err(AppendError::Full { used, cap }) => {
                                prop_assert_eq!(used, before);
                                prop_assert_eq!(cap, max_bytes);
                                prop_assert!(before + size > max_bytes);
                                prop_assert_eq!(wal.disk_bytes(), before);
                            }
                            Err(err) => prop_assert!(false, "append failed: {}", err),
                        }
                    }
                    Op::Ack(i) => {
                        if !live.is_empty() {
                            let (id, _) = live.remove(i % live.len());
                            wal.ack(id).unwrap();
                            acked.push(id);
                            ever_acked = true;
                        }
                    }
                    Op::AckAgain(i) => {
                        if !acked.is_empty() {
                            let before = wal.disk_bytes();
                            wal.ack(acked[i % acked.len()]).unwrap();
                            prop_assert_eq!(wal.disk_bytes(), before);
                        }
                    }
                    Op::Sync => wal.sync().unwrap(),
                    Op::Reopen => {
                        drop(wal);
                        let (new_wal, recovered) = Wal::open(dir, max_bytes, segment_bytes).unwrap();
                        wal = new_wal;
                        check_reopened(dir, &recovered, &live, false, damaged)?;
                        // Ids are ordered within one Wal: a new process may reuse the numbers
                        // of deleted segments, but never goes below what it recovered.
                        last_id = recovered.records.last().map(|(id, _)| *id);
                        forget_deleted(dir, &mut acked, &mut sizes);
                    }
                    Op::TruncateTail(cut) => {
                        drop(wal);
                        let mut cut_mid_record = false;
                        if let Some((&seq, &len)) = files(dir, SEGMENT_EXT).iter().next_back() {
                            let new_len = len - cut % (len + 1);
                            let file = OpenOptions::new()
                                .write(true)
                                .open(segment_path(dir, seq))
                                .unwrap();
                            file.set_len(new_len).unwrap();
                            cut_mid_record = sizes.iter().any(|(id, size)| {
                                id.seq == seq && id.offset < new_len && id.offset + size > new_len
                            });
                            damaged |= cut_mid_record;
                            live.retain(|(id, data)| {
                                id.seq != seq || id.offset + record_size(data) <= new_len
                            });
                        }
                        let (new_wal, recovered) = Wal::open(dir, max_bytes, segment_bytes).unwrap();
                        wal = new_wal;
                        check_reopened(dir, &recovered, &live, cut_mid_record, damaged)?;
                        last_id = recovered.records.last().map(|(id, _)| *id);
                        forget_deleted(dir, &mut acked, &mut sizes);
                    }
                }
                prop_assert_eq!(wal.disk_bytes(), dir_bytes(dir));
                prop_assert!(
                    wal.disk_bytes() <= max_bytes || ever_acked,
                    "only acknowledgements may take the log past its cap"
                );
            }
        }
    }
}
