//! Writing large files past the page cache (`O_DIRECT`), for checkpoints.
//!
//! A checkpoint is written once and read rarely (to resume, to score the best weights at the
//! end, to download). Written through the page cache, its bytes first take fresh pages of
//! memory, and on the virtual machines these benchmarks ran on that is the slow part: 176 MB
//! took 2.7–3.0 s buffered (about 65 MB/s, with nothing yet written back), against 0.09–0.15 s
//! straight to the disk (`dd bs=8M oflag=direct`). The bytes go through an aligned buffer in
//! whole blocks; the last block is padded and the file cut back to its length. A file system
//! that refuses `O_DIRECT` (tmpfs) gets ordinary writes.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::Path;

/// The alignment `O_DIRECT` asks of memory, lengths and offsets (a page covers every logical
/// block size in use).
const BLOCK: usize = 4096;
/// The buffer: whole blocks written at once.
const CAPACITY: usize = 4 << 20;

/// A buffer of [`CAPACITY`] bytes aligned to [`BLOCK`].
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
}

impl Aligned {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(CAPACITY, BLOCK).expect("a valid layout")
    }

    fn new() -> Aligned {
        // SAFETY: a layout of non-zero size
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        let ptr = std::ptr::NonNull::new(ptr)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout()));
        Aligned { ptr }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: CAPACITY bytes allocated by `new`, owned by this value
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), CAPACITY) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated by `new` with this layout
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

/// A new file written in whole aligned blocks; [`DirectFile::finish`] writes the rest and
/// cuts the file to the bytes given.
pub struct DirectFile {
    file: File,
    buf: Aligned,
    filled: usize,
    /// Bytes in the file before the buffer's (all the bytes given are `offset + filled`).
    offset: u64,
    /// Whether the file is open with `O_DIRECT`.
    direct: bool,
}

impl DirectFile {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> io::Result<DirectFile> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let (file, direct) = open_direct(&opts, path)?;
        Ok(DirectFile {
            file,
            buf: Aligned::new(),
            filled: 0,
            offset: 0,
            direct,
        })
    }

    /// Writes the first `n` bytes of the buffer (whole blocks unless this is the end).
    fn write_out(&mut self, n: usize) -> io::Result<()> {
        let len = if self.direct {
            n.next_multiple_of(BLOCK)
        } else {
            n
        };
        if len > n {
            self.buf.bytes()[n..len].fill(0);
        }
        match self.file.write_all(&self.buf.bytes()[..len]) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // the file system took the flag at open but refuses the writes: the buffer
                // again, from its place, with ordinary writes
                self.buffered()?;
                self.file.seek(io::SeekFrom::Start(self.offset))?;
                self.file.write_all(&self.buf.bytes()[..n])?;
            }
            other => other?,
        }
        self.offset += n as u64;
        Ok(())
    }

    /// Goes on with ordinary writes.
    pub fn buffered(&mut self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.file.as_raw_fd();
            // SAFETY: fcntl on a file descriptor this value owns
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.direct = false;
        Ok(())
    }

    /// Writes what is left, cuts the file to the bytes given, and closes it.
    pub fn finish(mut self) -> io::Result<()> {
        if self.filled > 0 {
            let n = self.filled;
            self.write_out(n)?;
            self.filled = 0;
        }
        if self.direct {
            self.file.set_len(self.offset)?;
        }
        Ok(())
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CAPACITY - self.filled);
        let at = self.filled;
        self.buf.bytes()[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == CAPACITY {
            self.write_out(CAPACITY)?;
            self.filled = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens with `O_DIRECT` where the file system takes it; otherwise as asked.
fn open_direct(opts: &std::fs::OpenOptions, path: &Path) -> io::Result<(File, bool)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut direct = opts.clone();
        direct.custom_flags(libc::O_DIRECT);
        match direct.open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((opts.open(path)?, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_every_length_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        // empty, under a block, a block and one, past the buffer (several flushes), and in
        // writes that straddle the buffer's end
        for len in [0, 1, 4095, 4097, CAPACITY + 12_345, 3 * CAPACITY] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            let mut f = DirectFile::create(&path).unwrap();
            for (i, piece) in data.chunks(1_000_003).enumerate() {
                f.write_all(piece).unwrap();
                if i == 4 {
                    // as a file system that refuses O_DIRECT's writes leaves it
                    f.buffered().unwrap();
                }
            }
            f.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len} bytes");
        }
    }
}
