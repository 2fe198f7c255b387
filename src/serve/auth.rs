//! `smlocal serve --require-signature`, for a machine shared with other users: every API
//! request must carry a valid AWS Signature Version 4 by a key pair the server accepts.
//! boto3, the AWS CLI and the SageMaker SDK sign every request already, so their code stays
//! unchanged. Accepted are the server's own key pair, kept in a file only its user can read
//! (made with a fresh random pair the first time), and the key pair in `smlocal serve`'s
//! own environment: a user whose SDK signs SageMaker and S3 calls with one set of
//! credentials needs nothing new.

use crate::serve::ApiError;
use crate::sigv4::{self, SignatureError};
use hyper::StatusCode;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The profile name in the key file (an AWS shared-credentials file).
pub(crate) const PROFILE: &str = "smlocal";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot {action} the server's key file '{}': {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the server's key file '{}' can be read by other users (mode {mode:o}); run `chmod 600 {}` or delete it to have a new key pair made",
        path.display(), path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the server's key file '{}' belongs to another user; delete it to have a new key pair made", path.display())]
    NotOwned { path: PathBuf },
    #[error(
        "the server's key file '{}' holds no [{PROFILE}] aws_access_key_id and aws_secret_access_key; delete it to have a new key pair made",
        path.display()
    )]
    Malformed { path: PathBuf },
}

/// The key pairs requests may be signed with.
#[derive(Clone)]
pub struct Signatures {
    keys: Vec<(String, String)>,
    /// The server's own key id, and the file that holds its pair.
    pub own_key: String,
    pub key_file: PathBuf,
}

impl std::fmt::Debug for Signatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a secret in a log.
        f.debug_struct("Signatures").field("own_key", &self.own_key).field("key_file", &self.key_file).finish()
    }
}

impl Signatures {
    /// The pair in `file` (made, readable by this user only, when missing), and `also`:
    /// `smlocal serve`'s own `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, when set.
    pub fn load_or_create(file: &Path, also: Option<(String, String)>) -> Result<Signatures, KeyFileError> {
        let (key_id, secret) = match read_key_file(file)? {
            Some(pair) => pair,
            None => create_key_file(file)?,
        };
        let mut keys = vec![(key_id.clone(), secret)];
        keys.extend(also);
        Ok(Signatures { keys, own_key: key_id, key_file: file.to_path_buf() })
    }

    /// Whether `request` with `body` is signed by an accepted key pair.
    pub(crate) fn check(&self, request: &hyper::http::request::Parts, body: &[u8]) -> Result<(), ApiError> {
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let computed = sigv4::sha256_hex(body);
        // A client may declare the payload's hash (S3's clients do); it must be the body's.
        let declared = request.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok());
        let payload_sha256 = match declared {
            Some(h) if h != computed && h != "UNSIGNED-PAYLOAD" => return Err(refused(SignatureError::Mismatch)),
            Some(h) => h.to_string(),
            None => computed,
        };
        let signed = sigv4::Request {
            method: request.method.as_str(),
            path: request.uri.path(),
            query: request.uri.query().unwrap_or(""),
            headers,
            payload_sha256,
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let secret_of = |key: &str| self.keys.iter().find(|(k, _)| k == key).map(|(_, s)| s.clone());
        sigv4::verify(&signed, secret_of, now).map_err(refused)
    }
}

fn refused(e: SignatureError) -> ApiError {
    let status =
        if matches!(e, SignatureError::Incomplete(_)) { StatusCode::BAD_REQUEST } else { StatusCode::FORBIDDEN };
    ApiError { status, kind: e.code(), message: e.to_string() }
}

/// The pair in an existing key file, which must be this user's and readable by no one else.
fn read_key_file(file: &Path) -> Result<Option<(String, String)>, KeyFileError> {
    let io = |action| move |source| KeyFileError::Io { action, path: file.to_path_buf(), source };
    // Never through a link another user could have planted.
    let opened =
        std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(file);
    let mut handle = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open")(e)),
    };
    let meta = handle.metadata().map_err(io("read"))?;
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(KeyFileError::NotOwned { path: file.to_path_buf() });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed { path: file.to_path_buf(), mode });
    }
    let mut text = String::new();
    handle.read_to_string(&mut text).map_err(io("read"))?;
    let value = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (value("aws_access_key_id"), value("aws_secret_access_key")) {
        (Some(k), Some(s)) => Ok(Some((k, s))),
        _ => Err(KeyFileError::Malformed { path: file.to_path_buf() }),
    }
}

/// A new random key pair, written to a new file of mode 0600 (never over another file).
fn create_key_file(file: &Path) -> Result<(String, String), KeyFileError> {
    let io = |action| move |source| KeyFileError::Io { action, path: file.to_path_buf(), source };
    let mut random = [0u8; 48];
    std::fs::File::open("/dev/urandom").and_then(|mut r| r.read_exact(&mut random)).map_err(io("make a key for"))?;
    // Key ids are upper-case letters and digits, as AWS's are; secrets 40 characters.
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let key_id: String =
        "SMLK".chars().chain(random[..16].iter().map(|b| ID[(*b as usize) % ID.len()] as char)).collect();
    let secret: String = random[8..48].iter().map(|b| SECRET[(*b as usize) % SECRET.len()] as char).collect();
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(io("make the folder of"))?;
    }
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file).map_err(io("create"))?;
    let text = format!(
        "# smlocal serve --require-signature accepts requests signed with this key pair.\n# Use it with AWS_SHARED_CREDENTIALS_FILE={} AWS_PROFILE={PROFILE}.\n[{PROFILE}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n",
        file.display()
    );
    out.write_all(text.as_bytes()).and_then(|()| out.sync_all()).map_err(io("write"))?;
    Ok((key_id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_made_once_for_its_user_only_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve-credentials");
        let first = Signatures::load_or_create(&file, None).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(first.own_key.starts_with("SMLK") && first.own_key.len() == 20, "{}", first.own_key);
        let again = Signatures::load_or_create(&file, Some(("AKIDENV".into(), "envsecret".into()))).unwrap();
        assert_eq!(again.own_key, first.own_key, "the same pair on every start");
        assert_eq!(again.keys.len(), 2);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Signatures::load_or_create(&file, None).unwrap_err();
        assert!(matches!(err, KeyFileError::Exposed { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        assert!(
            matches!(Signatures::load_or_create(&file, None), Err(KeyFileError::Io { .. })),
            "a link is never read"
        );
    }
}
