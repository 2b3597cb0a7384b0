//! Reading inside the roots with no way out: every directory and file is opened
//! relative to the handle of the directory it was listed in, never following a
//! symlink, and never waiting on a file that is not a regular one.
//!
//! A walk that lists a directory and then opens its entries by path can be led out of
//! the roots: swap a directory for a symlink to `/` between the two and the second
//! reads outside (issue 14 found `hash_files` and `search_text` leaking an outside
//! file's digest and lines that way). Here a path is opened component by component
//! from its root with `O_NOFOLLOW`, and each entry with `openat(2)` on its directory's
//! handle, so a swapped-in symlink fails to open (`ELOOP`) instead of being followed.
//! Files are opened with `O_NONBLOCK` and their type checked on the opened handle: a
//! FIFO swapped in for a file is refused at once instead of holding a thread in its
//! `open` until a writer comes. A hard link inside a root is a file of that root, like
//! any other: making one needs write access to the root and the file's own file system.

use std::ffi::OsStr;
use std::fs::File;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::roots::Located;

/// Directories deeper than this under the walked path are not entered: each level
/// holds a descriptor open while its entries are read.
pub const MAX_DEPTH: usize = 256;

/// What a walk passed over, so a result can say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Symlinks (never followed).
    pub symlinks: u64,
    /// FIFOs, sockets and devices (never opened for reading).
    pub special: u64,
    /// Entries that could not be read, each with its path relative to the walked path
    /// and why.
    pub unreadable: Vec<(String, String)>,
}

/// A regular file found by a walk, not yet opened.
pub struct FileEntry<'a> {
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
    /// Its path relative to the walked path (the file's own name when a file was walked).
    pub relative: &'a Path,
}

impl FileEntry<'_> {
    /// Opens it for reading, refusing what is no longer a regular file.
    pub fn open(&self) -> std::io::Result<File> {
        open_regular(self.dir, self.name)
    }

    /// Its size in bytes, read without opening it.
    pub fn size_bytes(&self) -> std::io::Result<u64> {
        let stat = statat(self.dir, self.name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(u64::try_from(stat.st_size).unwrap_or(0))
    }
}

/// Visits the regular files under `start` in name order, depth first (the order of a
/// sorted recursive listing), until `visit` breaks. Fails only when `start` itself cannot be
/// opened; what goes wrong below it is counted in [`Skipped`].
pub fn walk(
    start: &Located,
    mut visit: impl FnMut(&FileEntry<'_>) -> ControlFlow<()>,
) -> std::io::Result<Skipped> {
    let mut skipped = Skipped::default();
    let (parent, name) = open_parent(start)?;
    let Some(name) = name else {
        // The root itself.
        let _ = walk_dir(parent, &mut PathBuf::new(), 0, &mut skipped, &mut visit);
        return Ok(skipped);
    };
    match entry_type(parent.as_fd(), &name)? {
        FileType::Directory => {
            let dir = open_dir(parent.as_fd(), &name)?;
            let _ = walk_dir(dir, &mut PathBuf::new(), 0, &mut skipped, &mut visit);
        }
        FileType::RegularFile => {
            let relative = PathBuf::from(&name);
            let entry = FileEntry {
                dir: parent.as_fd(),
                name: &name,
                relative: &relative,
            };
            let _ = visit(&entry);
        }
        FileType::Symlink => return Err(Errno::LOOP.into()),
        _ => skipped.special += 1,
    }
    Ok(skipped)
}

/// Files under a path, found cheaply: used to predict a call's runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeSize {
    /// Regular files seen.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Whether the walk stopped at its time or entry cap (the counts are then a floor).
    pub capped: bool,
}

/// Counts files and bytes under a path (a file counts as itself), stopping after
/// `time_cap` or `max_files`, inside the roots and without following symlinks.
pub fn tree_size(located: &Located, time_cap: Duration, max_files: u64) -> TreeSize {
    let started = Instant::now();
    let mut size = TreeSize::default();
    let _ = walk(located, |file| {
        if size.files >= max_files || started.elapsed() > time_cap {
            size.capped = true;
            return ControlFlow::Break(());
        }
        size.files += 1;
        size.bytes += file.size_bytes().unwrap_or(0);
        ControlFlow::Continue(())
    });
    size
}

/// Opens the directory that holds `start.path`, from `start.root` down, one component
/// at a time without following symlinks; also the last component's name (`None` when
/// the path is the root).
fn open_parent(start: &Located) -> std::io::Result<(OwnedFd, Option<std::ffi::OsString>)> {
    let relative = start
        .path
        .strip_prefix(&start.root)
        .map_err(|_| std::io::Error::other("the path is not inside its root"))?;
    let mut dir = rustix::fs::open(
        &start.root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut components: Vec<&OsStr> = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => components.push(name),
            // A canonical path has none of these.
            _ => return Err(std::io::Error::other("the path is not canonical")),
        }
    }
    let Some((last, parents)) = components.split_last() else {
        return Ok((dir, None));
    };
    for name in parents {
        dir = open_dir(dir.as_fd(), name)?;
    }
    Ok((dir, Some(last.to_os_string())))
}

fn walk_dir(
    dir: OwnedFd,
    relative: &mut PathBuf,
    depth: usize,
    skipped: &mut Skipped,
    visit: &mut impl FnMut(&FileEntry<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let names = match list(&dir) {
        Ok(names) => names,
        Err(e) => {
            skipped.unreadable.push((shown(relative), e.to_string()));
            return ControlFlow::Continue(());
        }
    };
    for (name, listed) in names {
        relative.push(&name);
        let flow = match listed {
            FileType::Symlink => {
                skipped.symlinks += 1;
                ControlFlow::Continue(())
            }
            FileType::Directory if depth + 1 >= MAX_DEPTH => {
                let why = format!("more than {MAX_DEPTH} directories deep: not entered");
                skipped.unreadable.push((shown(relative), why));
                ControlFlow::Continue(())
            }
            FileType::Directory => match open_dir(dir.as_fd(), &name) {
                Ok(child) => walk_dir(child, relative, depth + 1, skipped, visit),
                // Swapped for a symlink since it was listed.
                Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                    skipped.symlinks += 1;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    skipped.unreadable.push((shown(relative), e.to_string()));
                    ControlFlow::Continue(())
                }
            },
            FileType::RegularFile => visit(&FileEntry {
                dir: dir.as_fd(),
                name: &name,
                relative,
            }),
            _ => {
                skipped.special += 1;
                ControlFlow::Continue(())
            }
        };
        relative.pop();
        flow?;
    }
    ControlFlow::Continue(())
}

/// The entries of a directory, sorted by name, with their types.
fn list(dir: &OwnedFd) -> std::io::Result<Vec<(std::ffi::OsString, FileType)>> {
    // `Dir` takes a descriptor of its own, so the walk keeps `dir` for its openat calls.
    let reading = rustix::io::dup(dir)?;
    let mut names = Vec::new();
    for entry in Dir::new(reading)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => entry_type(dir.as_fd(), name)?,
            kind => kind,
        };
        names.push((name.to_os_string(), kind));
    }
    names.sort_by(|(a, _), (b, _)| a.cmp(b));
    Ok(names)
}

fn entry_type(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<FileType> {
    let stat = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(stat.st_mode))
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(openat(dir, name, flags, Mode::empty())?)
}

/// Opens `name` in `dir` for reading if it is a regular file: without following a
/// symlink, and without waiting (a FIFO opened for reading would wait for a writer).
fn open_regular(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<File> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    // Reads of a regular file never block on O_NONBLOCK; it is cleared all the same so
    // the handle behaves as any other file's.
    rustix::fs::fcntl_setfl(&fd, rustix::fs::fcntl_getfl(&fd)? - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

fn shown(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        relative.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo").arg(path).status();
        assert!(made.unwrap().success(), "mkfifo {}", path.display());
    }

    fn files(root: &Path, path: &Path) -> (Vec<String>, Skipped) {
        let mut seen = Vec::new();
        let start = Located {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
        };
        let skipped = walk(&start, |file| {
            seen.push(file.relative.display().to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
        (seen, skipped)
    }

    #[test]
    fn files_come_in_sorted_depth_first_order_and_symlinks_and_fifos_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/z.txt"), "z").unwrap();
        std::fs::write(root.join("a/c.txt"), "c").unwrap();
        std::fs::write(root.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/out")).unwrap();
        mkfifo(&root.join("a/pipe"));
        let (seen, skipped) = files(&root, &root);
        assert_eq!(seen, ["a/b/z.txt", "a/c.txt", "b.txt"]);
        assert_eq!((skipped.symlinks, skipped.special), (1, 1));
        let (seen, _) = files(&root, &root.join("a/c.txt"));
        assert_eq!(seen, ["c.txt"]);
    }

    #[test]
    fn a_fifo_in_place_of_a_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        mkfifo(&root.join("pipe"));
        let handle =
            rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let err = open_regular(handle.as_fd(), OsStr::new("pipe")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_path_through_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        let start = Located {
            path: root.join("out/passwd"),
            root,
        };
        assert!(walk(&start, |_| ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn a_tree_too_deep_is_reported_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let too_deep = (0..MAX_DEPTH).fold(root.join("deep"), |path, i| path.join(i.to_string()));
        std::fs::create_dir_all(&too_deep).unwrap();
        let (_, skipped) = files(&root, &root);
        assert!(
            skipped
                .unreadable
                .iter()
                .any(|(_, why)| why.contains("deep")),
            "{skipped:?}"
        );
    }

    #[test]
    fn sizes_count_regular_files_and_their_bytes_and_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        std::fs::write(root.join("one.txt"), "12345").unwrap();
        std::fs::write(root.join("b/two.txt"), "123").unwrap();
        std::os::unix::fs::symlink(root.join("one.txt"), root.join("link")).unwrap();
        let all = Located {
            path: root.clone(),
            root,
        };
        let size = tree_size(&all, Duration::from_secs(5), 1000);
        let expected = TreeSize {
            files: 2,
            bytes: 8,
            capped: false,
        };
        assert_eq!(size, expected, "the symlink is not counted");
        assert!(tree_size(&all, Duration::from_secs(5), 1).capped);
    }
}
