//! The weights cache: a model's packed CPU weights written once to a file, then mapped
//! read-only and used in place.
//!
//! Why: the CPU kernels read weights packed in panels (`model::kernels::gemm`), which the checkpoint
//! does not hold, so without a cache every load converts and repacks every weight into private
//! memory (82 MiB for the default model). From the cache they are shared file pages: a restart
//! reads nothing but the file, a second daemon on the same model adds almost nothing, and the
//! kernel may drop and re-read the pages under memory pressure instead of swapping them.
//!
//! The file holds the packed panels of every named matmul weight and every embedding table (f16
//! where each value is exactly an f16, as the kernels use them; with `--dtype int8`, the
//! layers' quantized panels with their per-column scales and sums), keyed by everything they are
//! derived from: the format version, this build's version, the kernel set, the compute dtype,
//! config.json's bytes, and each weight file's name, size, modification time, inode and
//! safetensors header. A file whose key, length, table of contents or CRC-32 of its contents
//! disagrees is rebuilt, never trusted. It is written to a temporary file in the same directory
//! and renamed into place, so a reader sees the old file or the new one, never half of one, and
//! never a file changed in place under its mapping. A read-only directory is used read-only;
//! when nothing valid is there the weights stay private, with a warning.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::engine::loader::ModelDir;
use crate::model::kernels::weights::{Blob, Cached, Entry, Kind, Recording};

const MAGIC: &[u8; 8] = b"CLSFYDW\0";
/// Bump when the layout of the file or of the packed panels changes.
const FORMAT: u32 = 1;
const HEADER: usize = 128;
const ALIGN: usize = 64;

/// How the last load used the cache, for the log line, `inspect` and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// No cache directory was given, or caching is off.
    Off,
    /// The build does not pack weights on the CPU in F32 or int8 (a GPU, or F16/BF16), so
    /// nothing is cached.
    NotUsed,
    /// A valid cache file was mapped and its weights used in place.
    Hit(PathBuf),
    /// The file was (re)written and its weights used in place; `why` says why it was written.
    Written { path: PathBuf, why: String },
    /// The file could not be written; the weights are private memory.
    Unwritable { path: PathBuf, why: String },
    /// The directory is not the daemon's alone (another owner, or writable by group or others):
    /// nothing in it is mapped or written, and the weights are private memory.
    Untrusted { path: PathBuf, why: String },
}

impl CacheStatus {
    /// Whether the serving weights are views into the cache file.
    pub fn mapped(&self) -> bool {
        matches!(self, CacheStatus::Hit(_) | CacheStatus::Written { .. })
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheStatus::Off => f.write_str("off"),
            CacheStatus::NotUsed => {
                f.write_str("not used (only CPU F32 and int8 weights are cached)")
            }
            CacheStatus::Hit(p) => write!(f, "mapped {}", p.display()),
            CacheStatus::Written { path, why } => {
                write!(f, "written and mapped {} ({why})", path.display())
            }
            CacheStatus::Unwritable { path, why } => {
                write!(
                    f,
                    "cannot write {}: {why}; weights are private",
                    path.display()
                )
            }
            CacheStatus::Untrusted { path, why } => {
                write!(
                    f,
                    "not using {}: {why}; weights are private",
                    path.display()
                )
            }
        }
    }
}

/// The default cache directory: systemd's `CacheDirectory=` (`$CACHE_DIRECTORY`), else
/// `$XDG_CACHE_HOME/classifyd`, else `~/.cache/classifyd`.
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dirs) = env("CACHE_DIRECTORY") {
        // systemd joins several directories with ':'; the first is the unit's own.
        let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
        if first.is_some() {
            return first;
        }
    }
    if let Some(x) = env("XDG_CACHE_HOME") {
        return Some(PathBuf::from(x).join("classifyd"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".cache").join("classifyd"))
}

/// The cache file for one model directory, compute dtype and kernel set, and the key its
/// contents must carry.
pub struct CacheFile {
    pub path: PathBuf,
    key: [u8; 32],
}

/// Why a cache file was not used.
type Invalid = String;

impl CacheFile {
    pub fn for_model(
        cache_dir: &Path,
        dir: &ModelDir,
        dtype: &str,
        kernels: &str,
    ) -> io::Result<Self> {
        let root = fs::canonicalize(&dir.root)?;
        let mut key = Sha256::new();
        key.update(MAGIC);
        key.update(FORMAT.to_le_bytes());
        // The packing as this build's code defines it (build.rs hashes the sources that lay
        // out panels and this file), so a build that packs differently never reads old panels
        // however the version and FORMAT were left.
        for part in [
            env!("CARGO_PKG_VERSION"),
            env!("CLASSIFYD_PACKING"),
            kernels,
            dtype,
        ] {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part.as_bytes());
        }
        let config = fs::read(&dir.config_path)?;
        key.update((config.len() as u64).to_le_bytes());
        key.update(&config);
        for file in &dir.weight_files {
            let meta = fs::metadata(file)?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            key.update((name.len() as u64).to_le_bytes());
            key.update(name.as_bytes());
            for v in [meta.len(), meta.dev(), meta.ino()] {
                key.update(v.to_le_bytes());
            }
            key.update(meta.mtime().to_le_bytes());
            key.update(meta.mtime_nsec().to_le_bytes());
            key.update(safetensors_header(file)?);
        }
        let where_from = Sha256::digest(root.as_os_str().as_encoded_bytes());
        let stem: String = where_from[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            path: cache_dir.join(format!("{stem}-{dtype}-{kernels}.weights")),
            key: key.finalize().into(),
        })
    }

    /// Whether both were keyed alike: the model's files did not change between the two keys.
    pub fn same_key(&self, other: &CacheFile) -> bool {
        self.path == other.path && self.key == other.key
    }

    /// Whether the cache directory is the daemon's alone: owned by its effective uid and not
    /// writable by group or others. Anyone else who can write it could truncate a mapped file
    /// (SIGBUS), plant a FIFO (a start that never ends) or choose the weights served: a CRC is
    /// no signature. A directory that does not exist yet is made by [`Self::write`], private.
    pub fn dir_trusted(&self) -> Result<(), Invalid> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // The directory named may be a link (a volume mount, ~/.cache elsewhere): what
                // it points to must pass the same checks.
                private_to_us(&fs::metadata(dir).map_err(|e| e.to_string())?, "directory")
            }
            Ok(meta) => private_to_us(&meta, "directory"),
            // Missing, or a path through a file: nothing to trust yet, and the write will say
            // why it cannot be made.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("cannot inspect the directory: {e}")),
        }
    }

    /// The mapped, validated file; `Ok(None)` when there is none. Opened without following a
    /// link and without blocking (a FIFO would otherwise hold the load forever), then checked
    /// on the descriptor itself, which is what is mapped: a regular file of the daemon's own,
    /// writable by no one else.
    pub fn open(&self) -> Result<Option<Cached>, Invalid> {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err("a symbolic link, not a file of the daemon's own".into())
            }
            Err(e) => return Err(format!("cannot open: {e}")),
        };
        let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".into());
        }
        private_to_us(&meta, "file")?;
        // SAFETY: read-only; the file is a regular file that only this uid can write, only ever
        // replaced by rename, never written in place, and everything read from it is
        // bounds-checked below.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map: {e}"))?;
        parse(Arc::new(map), &self.key).map(Some)
    }

    /// Writes what a recorded build kept, atomically: a temporary file of a random name made
    /// with `O_EXCL` (mode 0600) in the same directory, renamed into place. The directory is
    /// made 0700 when missing. Then older files of this model and dtype (another kernel set)
    /// and temporary files left by a crash are removed.
    pub fn write(&self, rec: &Recording) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let blobs = rec.blobs().map_err(io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let name = self.file_name();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{name}.tmp."))
            .tempfile_in(dir)?;
        write_file(tmp.as_file_mut(), &self.key, &blobs)?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        self.remove_leftovers(dir);
        Ok(())
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Removes this model's other cache files of the same dtype (written for another kernel
    /// set, so never read on this machine again) and temporary files of its writes older than
    /// [`STALE_TMP`] (a crash's; a concurrent writer's are younger). Best effort.
    fn remove_leftovers(&self, dir: &Path) {
        let name = self.file_name();
        // `{stem}-{dtype}-`: the model and dtype; what follows names the kernel sets.
        let mut parts = name.splitn(3, '-');
        let (Some(stem), Some(dtype), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let model_dtype = format!("{stem}-{dtype}-");
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let other = e.file_name().to_string_lossy().into_owned();
            if other == name || !other.starts_with(&model_dtype) {
                continue;
            }
            let stale_tmp = other.contains(".weights.tmp.")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TMP));
            let old_weights = other.ends_with(".weights");
            if stale_tmp || old_weights {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// How old a temporary file must be before a write removes it as a crash's leftover.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Owned by the effective uid and writable by no one else.
fn private_to_us(meta: &fs::Metadata, what: &str) -> Result<(), Invalid> {
    use std::os::unix::fs::PermissionsExt;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "the {what} belongs to uid {}, not this daemon's uid {euid}",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "the {what} is writable by group or others (mode {:o})",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The safetensors header (its 8-byte length and JSON): names, dtypes, shapes and offsets.
fn safetensors_header(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    // Headers are kilobytes; the cap only bounds a corrupt length (the loader refuses it).
    let n = u64::from_le_bytes(len).min(100 << 20);
    let mut header = len.to_vec();
    f.take(n).read_to_end(&mut header)?;
    Ok(header)
}

fn align(at: usize) -> usize {
    at.div_ceil(ALIGN) * ALIGN
}

/// One table-of-contents record: name, kind, element type, dims, offset, byte length.
fn toc_record(out: &mut Vec<u8>, name: &str, kind: Kind, f16: bool, dims: (usize, usize), at: u64) {
    out.extend((name.len() as u32).to_le_bytes());
    out.extend(name.as_bytes());
    out.push(match kind {
        Kind::Panels => 0,
        Kind::Rows => 1,
        Kind::Int8 => 2,
    });
    out.push(u8::from(f16));
    for v in [dims.0 as u64, dims.1 as u64, at] {
        out.extend(v.to_le_bytes());
    }
}

fn write_file(file: &mut File, key: &[u8; 32], blobs: &[Blob]) -> io::Result<()> {
    // Lay the blobs out first: the table of contents names their absolute offsets.
    let toc_len: usize = blobs
        .iter()
        .flat_map(|b| &b.parts)
        .map(|p| 4 + p.name.len() + 2 + 24)
        .sum::<usize>()
        + 4;
    let data_start = align(HEADER + toc_len);
    let mut at = data_start;
    let mut toc = Vec::with_capacity(toc_len);
    let count: usize = blobs.iter().map(|b| b.parts.len()).sum();
    toc.extend((count as u32).to_le_bytes());
    let mut starts = Vec::with_capacity(blobs.len());
    for b in blobs {
        starts.push(at);
        for p in &b.parts {
            toc_record(&mut toc, &p.name, p.kind, p.f16, p.dims, (at + p.at) as u64);
        }
        at = align(at + b.bytes().len());
    }
    let end = at;

    let mut crc = crc32fast::Hasher::new();
    let mut f = BufWriter::with_capacity(1 << 20, file);
    f.write_all(&[0u8; HEADER])?;
    f.write_all(&toc)?;
    crc.update(&toc);
    let mut pos = HEADER + toc.len();
    for (b, start) in blobs.iter().zip(starts) {
        let pad = vec![0u8; start - pos];
        f.write_all(&pad)?;
        crc.update(&pad);
        f.write_all(b.bytes())?;
        crc.update(b.bytes());
        pos = start + b.bytes().len();
    }
    let pad = vec![0u8; end - pos];
    f.write_all(&pad)?;
    crc.update(&pad);

    let mut header = Vec::with_capacity(HEADER);
    header.extend(MAGIC);
    header.extend(FORMAT.to_le_bytes());
    header.extend(key);
    header.extend((toc.len() as u64).to_le_bytes());
    header.extend((end as u64).to_le_bytes());
    header.extend(crc.finalize().to_le_bytes());
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&header)?;
    f.sync_all()
}

/// Reads little-endian fields off a byte slice, failing past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Invalid> {
        if self.0.len() < n {
            return Err("table of contents is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Invalid> {
        let mut v = [0u8; 8];
        v.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(v))
    }
    fn usize(&mut self) -> Result<usize, Invalid> {
        usize::try_from(self.u64()?).map_err(|_| Invalid::from("a size does not fit"))
    }
}

/// Checks the header, key, length and CRC, then each entry's bounds.
fn parse(map: Arc<Mmap>, key: &[u8; 32]) -> Result<Cached, Invalid> {
    let bytes: &[u8] = &map;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a weights cache file (or truncated)".into());
    }
    let mut h = Reader(&bytes[8..HEADER]);
    let format = h.u32()?;
    if format != FORMAT {
        return Err(format!("format {format}, this build writes {FORMAT}"));
    }
    if h.take(32)? != key {
        return Err("stale: the model, its config or this build changed".into());
    }
    let toc_len = h.usize()?;
    let end = h.usize()?;
    let crc = h.u32()?;
    if end != bytes.len() || HEADER.checked_add(toc_len).is_none_or(|t| t > end) {
        return Err(format!(
            "truncated or extended: {} bytes, header says {end}",
            bytes.len()
        ));
    }
    if crc32fast::hash(&bytes[HEADER..]) != crc {
        return Err("corrupt: CRC-32 mismatch".into());
    }
    let mut toc = Reader(&bytes[HEADER..HEADER + toc_len]);
    let count = toc.u32()?;
    let mut entries = HashMap::new();
    for _ in 0..count {
        let len = toc.u32()? as usize;
        let name = std::str::from_utf8(toc.take(len)?)
            .map_err(|_| Invalid::from("a name is not UTF-8"))?
            .to_string();
        let kind = match toc.take(1)?[0] {
            0 => Kind::Panels,
            1 => Kind::Rows,
            2 => Kind::Int8,
            k => return Err(format!("unknown entry kind {k}")),
        };
        let f16 = toc.take(1)?[0] == 1;
        let dims = (toc.usize()?, toc.usize()?);
        let offset = toc.usize()?;
        let entry = Entry {
            kind,
            f16,
            dims,
            offset,
        };
        let size = entry.bytes().and_then(|b| b.checked_add(offset));
        if offset < HEADER + toc_len || size.is_none_or(|e| e > end) {
            return Err(format!("entry {name} lies outside the file"));
        }
        entries.insert(name, entry);
    }
    Ok(Cached::new(map, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_prefers_systemd_then_xdg() {
        // Environment variables are process-wide; this is the only test that sets them.
        std::env::set_var("CACHE_DIRECTORY", "/var/cache/classifyd:/var/cache/other");
        assert_eq!(default_dir(), Some(PathBuf::from("/var/cache/classifyd")));
        std::env::remove_var("CACHE_DIRECTORY");
        std::env::set_var("XDG_CACHE_HOME", "/x");
        assert_eq!(default_dir(), Some(PathBuf::from("/x/classifyd")));
        std::env::remove_var("XDG_CACHE_HOME");
    }
}
