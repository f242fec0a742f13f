//! Files named by users (a registration's `options.splits` and `options.images`, the image
//! paths inside dataset files, and the files a format looks for by name) are confined to the
//! dataset folder and read within bounds.
//!
//! - A path is inside the folder when, with symlinks and `..` resolved, it lies under the
//!   folder's own resolved path: an absolute path elsewhere, `../` or a symlink out of the
//!   folder is refused with the same message whether or not its target exists.
//! - Only regular files are read (not devices such as `/dev/zero`, nor pipes), of at most
//!   [`MAX_FILE_BYTES`], and text files line by line with lines of at most [`MAX_LINE_BYTES`].

use anyhow::{Result, bail};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// The largest dataset file read.
pub const MAX_FILE_BYTES: u64 = 8 << 30;
/// The longest line of a text dataset file.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// `path` (absolute, or relative to `root`) resolved, if it lies inside `root`. The error says
/// only that the path is not inside the dataset folder, never whether something is there.
pub fn inside(root: &Path, path: &Path) -> Result<PathBuf> {
    Folder::new(root)?.inside(path)
}

/// A dataset folder with its resolved path, for checking many paths against it.
pub struct Folder {
    root: PathBuf,
    real: PathBuf,
}

impl Folder {
    /// The folder `root` (which must exist).
    pub fn new(root: &Path) -> Result<Folder> {
        Ok(Folder {
            root: root.to_path_buf(),
            real: std::fs::canonicalize(root)?,
        })
    }

    /// `path` (absolute, or relative to the folder) resolved, if it lies inside the folder.
    pub fn inside(&self, path: &Path) -> Result<PathBuf> {
        let outside = || anyhow::anyhow!("`{}` is not inside the dataset folder", path.display());
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.root.join(path)
        };
        match std::fs::canonicalize(&joined) {
            Ok(real) if real.starts_with(&self.real) => Ok(real),
            Ok(_) => Err(outside()),
            // it does not exist: whether it would be inside is decided on the words alone
            Err(_) => {
                let lexical = normalise(&joined);
                if lexical.starts_with(&self.real) || lexical.starts_with(normalise(&self.root)) {
                    Ok(lexical)
                } else {
                    Err(outside())
                }
            }
        }
    }

    /// Whether `path` is a regular file inside the folder.
    pub fn is_file(&self, path: &Path) -> bool {
        self.inside(path).is_ok_and(|p| p.is_file())
    }
}

/// `path` with `.` and `..` taken out without touching the file system.
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Opens `path` (inside `root`) for reading: a regular file of at most [`MAX_FILE_BYTES`],
/// read no further than that even if it grows.
pub fn open(root: &Path, path: &Path) -> Result<std::io::Take<File>> {
    let real = inside(root, path)?;
    let meta = std::fs::metadata(&real)
        .map_err(|_| anyhow::anyhow!("`{}` cannot be read", path.display()))?;
    if !meta.is_file() {
        bail!("`{}` is not a regular file", path.display());
    }
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "`{}` is {} bytes, more than the {MAX_FILE_BYTES} a dataset file may have",
            path.display(),
            meta.len()
        );
    }
    Ok(File::open(&real)?.take(MAX_FILE_BYTES))
}

/// The lines of a reader, each at most [`MAX_LINE_BYTES`] (a longer one is an error naming
/// its number), without their line endings.
pub fn lines(reader: impl Read) -> impl Iterator<Item = Result<String>> {
    let mut reader = BufReader::new(reader);
    let mut number = 0usize;
    std::iter::from_fn(move || {
        number += 1;
        let mut buf = Vec::new();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf);
        match read {
            Ok(0) => None,
            Ok(_) if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") => Some(Err(
                anyhow::anyhow!("line {number} is longer than {MAX_LINE_BYTES} bytes"),
            )),
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                Some(
                    String::from_utf8(buf)
                        .map_err(|_| anyhow::anyhow!("line {number} is not UTF-8")),
                )
            }
            Err(e) => Some(Err(e.into())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_out_of_the_folder_are_refused_alike_whether_or_not_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ds");
        std::fs::create_dir_all(root.join("img")).unwrap();
        std::fs::write(root.join("img/a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
        assert!(inside(&root, Path::new("img/a.png")).is_ok());
        assert!(inside(&root, Path::new("img/../img/a.png")).is_ok());
        assert!(
            inside(&root, Path::new("img/missing.png")).is_ok(),
            "inside, not there"
        );
        for bad in [
            "../secret.txt",
            "../no-such-file",
            "link.txt",
            "/etc/passwd",
            "/no/such/file",
            "img/../../secret.txt",
        ] {
            let e = inside(&root, Path::new(bad)).unwrap_err().to_string();
            assert_eq!(e, format!("`{bad}` is not inside the dataset folder"));
        }
        // devices and folders are not read
        assert!(
            open(Path::new("/dev"), Path::new("/dev/zero"))
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(open(&root, Path::new("img")).is_err());
        let folder = Folder::new(&root).unwrap();
        assert!(folder.is_file(Path::new("img/a.png")));
        assert!(!folder.is_file(Path::new("link.txt")));
    }

    #[test]
    fn lines_are_bounded() {
        let text = b"one\r\ntwo\n\nthree";
        let got: Vec<String> = lines(&text[..]).map(Result::unwrap).collect();
        assert_eq!(got, ["one", "two", "", "three"]);
        let long = vec![b'a'; MAX_LINE_BYTES + 10];
        let mut it = lines(&long[..]);
        assert!(
            it.next()
                .unwrap()
                .unwrap_err()
                .to_string()
                .contains("line 1 is longer")
        );
    }
}
