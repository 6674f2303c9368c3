//! Where the admin API's bearer token lives when `SMSGATE_ADMIN_TOKEN` is
//! not set (docs/ARCHITECTURE.md §6, "HTTP (contract)": the token is always required).
//!
//! ingress generates one at first start into a file only its user can read
//! (mode 0600, in a directory of mode 0700); the CLI reads the same file.
//! The file is, in order:
//!
//! 1. `SMSGATE_ADMIN_TOKEN_FILE`;
//! 2. `$XDG_STATE_HOME/smsgate/admin-token`;
//! 3. `$HOME/.local/state/smsgate/admin-token` (XDG's default state home).
//!
//! Both look it up the same way through [`path`], so with the same user and
//! environment they meet without any extra step.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::config::Lookup;

/// The variable naming the file explicitly.
pub const FILE_VAR: &str = "SMSGATE_ADMIN_TOKEN_FILE";

/// The token file for this environment (None when neither
/// `SMSGATE_ADMIN_TOKEN_FILE`, `XDG_STATE_HOME` nor `HOME` is set).
pub fn path(env: Lookup<'_>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(p) = set(FILE_VAR) {
        return Some(PathBuf::from(p));
    }
    let state = set("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|h| Path::new(&h).join(".local").join("state")))?;
    Some(state.join("smsgate").join("admin-token"))
}

/// The token in `file`, if the file exists and holds one.
pub fn read(file: &Path) -> io::Result<Option<SecretString>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()).map(SecretString::from)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The token in `file`, generated and written there first when there is
/// none (`true` then). A file others can read is made private again.
pub fn load_or_create(file: &Path) -> io::Result<(SecretString, bool)> {
    if let Some(token) = read(file)? {
        make_private(file)?;
        return Ok((token, false));
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let token = crate::config::generate_token();
    match create_private_file(file) {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            Ok((SecretString::from(token), true))
        }
        // Another ingress made it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read(file)?.map(|t| (t, false)).ok_or_else(|| io::Error::other("the admin token file is empty"))
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn create_private_file(file: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file)
}

#[cfg(not(unix))]
fn create_private_file(file: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(file)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn make_private(file: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(file = %file.display(), "the admin token file was readable by others; made it 0600");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_file: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn the_file_comes_from_the_variable_then_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let p = |e: &dyn Fn(&str) -> Option<String>| path(e).map(|p| p.display().to_string());
        assert_eq!(p(&env(&[(FILE_VAR, "/x/t"), ("HOME", "/h")])).as_deref(), Some("/x/t"));
        assert_eq!(p(&env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])).as_deref(), Some("/s/smsgate/admin-token"));
        assert_eq!(p(&env(&[("HOME", "/h")])).as_deref(), Some("/h/.local/state/smsgate/admin-token"));
        assert_eq!(p(&env(&[])), None);
    }

    #[cfg(unix)]
    #[test]
    fn generates_once_into_a_private_file_and_reads_it_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/smsgate/admin-token");
        let (first, created) = load_or_create(&file).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let (again, created) = load_or_create(&file).unwrap();
        assert!(!created);
        assert_eq!(first.expose_secret(), again.expose_secret());
        assert_eq!(read(&file).unwrap().unwrap().expose_secret(), first.expose_secret());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(&file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
