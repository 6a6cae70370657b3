//! The data directory belongs to the server's user alone.
//!
//! It holds the admin token, the database (registries, device credentials, configs) and every
//! device message, so it is mode 0700 and what Ferrocore creates in it is 0600 (directories 0700).
//! A directory or file that group or others can reach (an older version's `ferrocore.db` was 0644;
//! a directory made by hand may be 0755) is closed at start, and the log says what was changed.

use anyhow::{Context, Result, bail};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The database file; SQLite gives its `-wal` and `-shm` files the same mode.
pub const DATABASE_FILE: &str = "ferrocore.db";

/// Creates the data directory (0700), or closes an existing one and what it holds to group and
/// others; creates the database file with mode 0600 before SQLite does (SQLite would use 0644).
/// Returns the database's path.
pub fn prepare(dir: &Path) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let meta = fs::metadata(dir).with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the data directory {} is not a directory", dir.display());
    }
    let mut opened = Vec::new();
    close_tree(dir, &mut opened)?;
    if !opened.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            changed = opened.len(),
            first = %opened[0].display(),
            "group or others could reach files in the data directory; removed their access"
        );
    }
    let db = dir.join(DATABASE_FILE);
    match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&db) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", db.display())),
    }
    Ok(db)
}

/// Takes group and other permissions off `path` and, for a directory, everything under it;
/// records what it changed. Symbolic links are neither followed nor changed.
fn close_tree(path: &Path, changed: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700)).with_context(|| {
            format!(
                "{} is open to other users and cannot be changed; run `chmod go= {}`",
                path.display(),
                path.display()
            )
        })?;
        changed.push(path.to_owned());
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
            close_tree(&entry?.path(), changed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_directory_and_its_database_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let db = prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn an_open_directory_is_closed_with_what_it_holds() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        fs::create_dir_all(dir.join("topics/t")).unwrap();
        fs::write(dir.join("ferrocore.db"), b"").unwrap();
        fs::write(dir.join("topics/t/0.log"), b"").unwrap();
        for (p, m) in
            [("", 0o755), ("topics", 0o775), ("topics/t", 0o755), ("ferrocore.db", 0o644), ("topics/t/0.log", 0o666)]
        {
            fs::set_permissions(dir.join(p), fs::Permissions::from_mode(m)).unwrap();
        }
        prepare(&dir).unwrap();
        for (p, m) in
            [("", 0o700), ("topics", 0o700), ("topics/t", 0o700), ("ferrocore.db", 0o600), ("topics/t/0.log", 0o600)]
        {
            assert_eq!(mode(&dir.join(p)), m, "{p}");
        }
    }
}
