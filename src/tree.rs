//! Walking and opening paths in folders a container can write, the one way smlocal does it:
//! by descriptor, each component opened relative to its parent with `O_NOFOLLOW`, so a
//! symbolic link is reported as a link and never followed, and a folder or file swapped for
//! a link while smlocal works fails instead of leading out onto the host. Only the `trusted`
//! folder a walk starts from (a host's tree, which smlocal made) is opened by path. The
//! archives, the checkpoint syncer and channel copies all go through here.

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A folder a container can write: `below` inside `trusted`, a folder smlocal made (a host's
/// tree). Nothing below `trusted` is resolved through a link.
#[derive(Debug, Clone, PartialEq)]
pub struct Beneath {
    trusted: PathBuf,
    below: PathBuf,
}

impl Beneath {
    pub(crate) fn new(trusted: &Path, below: &str) -> Self {
        Beneath { trusted: trusted.to_path_buf(), below: PathBuf::from(below) }
    }

    /// `folder` itself, trusting its parent: for folders no container can reach.
    pub fn folder(folder: &Path) -> Self {
        let name = folder.file_name().map(PathBuf::from).unwrap_or_default();
        Beneath { trusted: folder.parent().unwrap_or(Path::new("/")).to_path_buf(), below: name }
    }

    /// Where it is on this machine (for messages).
    pub(crate) fn path(&self) -> PathBuf {
        self.trusted.join(&self.below)
    }

    /// Whether a link stands where the folder or one of its parents should be (the folder
    /// being absent, or a file, is not this error).
    pub(crate) fn link_in_place(&self) -> Option<TreeError> {
        match open_dir_beneath(&self.trusted, &self.below) {
            Err(e @ TreeError::Link { .. }) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn walk(&self, visit: &mut dyn FnMut(Entry)) -> Result<(), TreeError> {
        walk(&self.trusted, &self.below, visit)
    }

    /// The regular file `relative` in this folder (see [`open_file`]).
    pub(crate) fn open(&self, relative: &Path) -> Result<std::fs::File, TreeError> {
        open_file(&self.trusted, &self.below.join(relative))
    }
}

/// What a walked path is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EntryKind {
    Dir,
    File {
        len: u64,
        modified: SystemTime,
    },
    /// A symbolic link and where it points (not resolved).
    Link(PathBuf),
    /// A socket, device or FIFO: nothing a copy or an archive can carry.
    Special,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The path below the walked folder.
    pub(crate) relative: PathBuf,
    /// The path on this machine (for messages and for readers that run after the
    /// containers have exited).
    pub(crate) path: PathBuf,
    pub(crate) kind: EntryKind,
}

/// Why a folder below a trusted one cannot be walked or a file in it opened.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A component of the path is a symbolic link: smlocal does not follow it.
    #[error("'{}' is a symbolic link (to '{}'); smlocal never follows links out of a container's folders", path.display(), target.display())]
    Link { path: PathBuf, target: PathBuf },
    /// A component is something else than a folder (or, at the end, a regular file).
    #[error("'{}' is not a {wanted}", path.display())]
    NotA { path: PathBuf, wanted: &'static str },
    #[error("cannot read '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TreeError {
    /// Whether the path simply is not there.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, TreeError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Opens the folder `below` inside `trusted` without following a link anywhere below
/// `trusted`.
fn open_dir_beneath(trusted: &Path, below: &Path) -> Result<OwnedFd, TreeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| TreeError::Io { path, source: e.into() }
    };
    let mut fd = rustix::fs::open(trusted, DIR_FLAGS, Mode::empty()).map_err(io(trusted))?;
    let mut at = trusted.to_path_buf();
    for name in components(below)? {
        at.push(name);
        fd = open_dir_at(&fd, name, &at)?;
    }
    Ok(fd)
}

/// Opens the folder `name` in `dir`, or says what it is instead.
fn open_dir_at(dir: &OwnedFd, name: &std::ffi::OsStr, path: &Path) -> Result<OwnedFd, TreeError> {
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(e) => Err(what_instead(dir, name, path, "folder")
            .unwrap_or_else(|| TreeError::Io { path: path.to_path_buf(), source: e.into() })),
    }
}

/// When an open failed: the link or the other kind of file that stands there.
fn what_instead(dir: &OwnedFd, name: &std::ffi::OsStr, path: &Path, wanted: &'static str) -> Option<TreeError> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new()).ok()?;
            Some(TreeError::Link { path: path.to_path_buf(), target: PathBuf::from(os_string(target.into_bytes())) })
        }
        FileType::Directory if wanted == "folder" => None,
        FileType::RegularFile if wanted == "regular file" => None,
        _ => Some(TreeError::NotA { path: path.to_path_buf(), wanted }),
    }
}

fn os_string(bytes: Vec<u8>) -> std::ffi::OsString {
    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes)
}

/// The plain names of a relative path; anything else (`..`, a root) is refused.
fn components(relative: &Path) -> Result<Vec<&std::ffi::OsStr>, TreeError> {
    relative
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(TreeError::NotA { path: relative.to_path_buf(), wanted: "path below the folder" }),
        })
        .collect()
}

/// Visits everything in the folder `below` inside `trusted` (not the folder itself),
/// depth first, parents before their contents. The first error ends the walk: a caller
/// never mistakes a partial listing for the whole folder.
pub(crate) fn walk(trusted: &Path, below: &Path, visit: &mut dyn FnMut(Entry)) -> Result<(), TreeError> {
    let fd = open_dir_beneath(trusted, below)?;
    let path = trusted.join(below);
    walk_fd(&fd, &path, Path::new(""), visit)
}

fn walk_fd(dir: &OwnedFd, path: &Path, relative: &Path, visit: &mut dyn FnMut(Entry)) -> Result<(), TreeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustix::io::Errno| TreeError::Io { path, source: e.into() }
    };
    let mut names = Vec::new();
    for entry in Dir::read_from(dir).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(os_string(name.to_vec()));
        }
    }
    for name in names {
        let (path, relative) = (path.join(&name), relative.join(&name));
        let stat = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(io(&path))?;
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => EntryKind::Dir,
            FileType::RegularFile => EntryKind::File {
                len: stat.st_size as u64,
                modified: SystemTime::UNIX_EPOCH
                    + Duration::new(stat.st_mtime.max(0) as u64, stat.st_mtime_nsec.clamp(0, 999_999_999) as u32),
            },
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, &name, Vec::new()).map_err(io(&path))?;
                EntryKind::Link(PathBuf::from(os_string(target.into_bytes())))
            }
            _ => EntryKind::Special,
        };
        let is_dir = kind == EntryKind::Dir;
        visit(Entry { relative: relative.clone(), path: path.clone(), kind });
        if is_dir {
            // Opened with O_NOFOLLOW: a folder swapped for a link since the stat fails here.
            let child = open_dir_at(dir, &name, &path)?;
            walk_fd(&child, &path, &relative, visit)?;
        }
    }
    Ok(())
}

/// Opens the regular file `relative` below `trusted` for reading, following no link on the
/// way and refusing anything but a regular file (a FIFO is never opened blocking). What is
/// read comes from this descriptor, so a file swapped after it was opened cannot redirect it.
pub(crate) fn open_file(trusted: &Path, relative: &Path) -> Result<std::fs::File, TreeError> {
    let names = components(relative)?;
    let Some((file, folders)) = names.split_last() else {
        return Err(TreeError::NotA { path: trusted.to_path_buf(), wanted: "regular file" });
    };
    let dir = open_dir_beneath(trusted, &folders.iter().collect::<PathBuf>())?;
    let path = trusted.join(relative);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, *file, flags, Mode::empty()).map_err(|e| {
        what_instead(&dir, file, &path, "regular file")
            .unwrap_or(TreeError::Io { path: path.clone(), source: e.into() })
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| TreeError::Io { path: path.clone(), source: e.into() })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(TreeError::NotA { path, wanted: "regular file" });
    }
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(root: &Path, below: &str) -> Result<Vec<(String, EntryKind)>, TreeError> {
        let mut seen = Vec::new();
        walk(root, Path::new(below), &mut |e| seen.push((e.relative.display().to_string(), e.kind)))?;
        Ok(seen)
    }

    #[test]
    fn links_are_reported_and_never_followed_and_parents_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/file"), b"12345").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/etc")).unwrap();
        let seen = names(root, "").unwrap();
        let at = |name: &str| seen.iter().position(|(n, _)| n == name).unwrap();
        assert!(at("a") < at("a/b") && at("a/b") < at("a/b/file"), "{seen:?}");
        assert_eq!(seen[at("a/etc")].1, EntryKind::Link(PathBuf::from("/etc")));
        assert!(!seen.iter().any(|(n, _)| n.starts_with("a/etc/")), "a link was followed: {seen:?}");
        assert!(matches!(seen[at("a/b/file")].1, EntryKind::File { len: 5, .. }));
        assert!(names(root, "missing").unwrap_err().is_not_found());
    }

    #[test]
    fn a_folder_or_a_parent_swapped_for_a_link_is_refused_not_followed() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), b"host file").unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        // /opt/ml/model itself a link, and /opt/ml/output a link above output/data.
        std::os::unix::fs::symlink(host.path(), root.join("model")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.join("output")).unwrap();
        std::fs::create_dir_all(host.path().join("data")).unwrap();
        for below in ["model", "output/data"] {
            let err = names(root, below).unwrap_err();
            assert!(matches!(err, TreeError::Link { .. }), "{below}: {err}");
            assert!(err.to_string().contains("is a symbolic link"), "{err}");
        }
        assert!(matches!(open_file(root, Path::new("model/secret")), Err(TreeError::Link { .. })));
        assert!(matches!(open_file(root, Path::new("../x")), Err(TreeError::NotA { .. })));
    }

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("plain"), b"text").unwrap();
        std::os::unix::fs::symlink(root.join("plain"), root.join("link")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_file(root, Path::new("plain")).unwrap(), &mut text).unwrap();
        assert_eq!(text, "text");
        assert!(matches!(open_file(root, Path::new("link")), Err(TreeError::Link { .. })));
        assert!(matches!(open_file(root, Path::new("fifo")), Err(TreeError::NotA { .. })));
    }
}
