//! Walking a folder on this machine the one way smlocal does it: depth first, parents before
//! their contents, and symbolic links reported as links, never followed (a container's folder
//! may link anywhere on the host). The tarball, the checkpoint syncer and the channel copy
//! all walk through here.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

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
    /// The path below the walked root.
    pub(crate) relative: PathBuf,
    /// The path on this machine.
    pub(crate) path: PathBuf,
    pub(crate) kind: EntryKind,
}

/// Visits everything below `root` (not `root` itself). The first error ends the walk: a
/// caller never mistakes a partial listing for the whole folder.
pub(crate) fn walk(root: &Path, visit: &mut dyn FnMut(Entry)) -> std::io::Result<()> {
    walk_below(root, Path::new(""), visit)
}

fn walk_below(dir: &Path, relative: &Path, visit: &mut dyn FnMut(Entry)) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let relative = relative.join(entry.file_name());
        // symlink_metadata: a link is described, not followed.
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File { len: meta.len(), modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) }
        } else if meta.file_type().is_symlink() {
            EntryKind::Link(std::fs::read_link(&path)?)
        } else {
            EntryKind::Special
        };
        let is_dir = kind == EntryKind::Dir;
        visit(Entry { relative: relative.clone(), path: path.clone(), kind });
        if is_dir {
            walk_below(&path, &relative, visit)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_reported_and_never_followed_and_parents_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/file"), b"12345").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/etc")).unwrap();
        let mut seen = Vec::new();
        walk(root, &mut |e| seen.push(e)).unwrap();
        let names: Vec<String> = seen.iter().map(|e| e.relative.display().to_string()).collect();
        let at = |name: &str| names.iter().position(|n| n == name).unwrap();
        assert!(at("a") < at("a/b") && at("a/b") < at("a/b/file"), "{names:?}");
        assert_eq!(seen[at("a/etc")].kind, EntryKind::Link(PathBuf::from("/etc")));
        assert!(!names.iter().any(|n| n.starts_with("a/etc/")), "a link was followed: {names:?}");
        assert!(matches!(seen[at("a/b/file")].kind, EntryKind::File { len: 5, .. }));
        assert!(walk(&root.join("missing"), &mut |_| {}).is_err());
    }
}
