//! Tokens files for the servers under test (`CACHE_AUTH_TOKENS_FILE`), and requests carrying a bearer token.

use std::path::{Path, PathBuf};

/// One `[[token]]` entry: a bearer token (stored as its SHA-256) and/or a client certificate subject.
#[derive(Debug, Clone)]
pub struct Token<'a> {
    /// The entry's name.
    pub name: &'a str,
    /// The bearer token (the file gets its digest), if any.
    pub token: Option<&'a str>,
    /// The client certificate subject, if any.
    pub subject: Option<&'a str>,
    /// The tenant.
    pub tenant: &'a str,
    /// The scopes.
    pub scopes: &'a [&'a str],
}

impl<'a> Token<'a> {
    /// A bearer-token entry.
    pub fn bearer(name: &'a str, token: &'a str, tenant: &'a str, scopes: &'a [&'a str]) -> Self {
        Self {
            name,
            token: Some(token),
            subject: None,
            tenant,
            scopes,
        }
    }
}

/// Hex SHA-256 of `token`, as the tokens file holds it.
pub fn sha256_hex(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text of a tokens file holding `tokens`.
pub fn tokens_toml(tokens: &[Token<'_>]) -> String {
    let mut out = String::new();
    for t in tokens {
        out.push_str("[[token]]\n");
        out.push_str(&format!("name = {:?}\n", t.name));
        if let Some(token) = t.token {
            out.push_str(&format!("sha256 = \"{}\"\n", sha256_hex(token)));
        }
        if let Some(subject) = t.subject {
            out.push_str(&format!("client_cert_subject = {subject:?}\n"));
        }
        out.push_str(&format!("tenant = {:?}\n", t.tenant));
        let scopes: Vec<String> = t.scopes.iter().map(|s| format!("{s:?}")).collect();
        out.push_str(&format!("scopes = [{}]\n\n", scopes.join(", ")));
    }
    out
}

/// Writes `text` to `path` the way an operator (or a Kubernetes secret mount) replaces a file: a new file
/// renamed over the old one, mode 600, with a modification time the server sees as new.
///
/// # Panics
/// If the file cannot be written.
pub fn write_atomically(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the tokens file");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    std::fs::rename(&tmp, path).expect("rename the tokens file into place");
}

/// A request carrying `authorization: Bearer <token>`.
///
/// # Panics
/// If the token is not a valid header value.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    request
}
