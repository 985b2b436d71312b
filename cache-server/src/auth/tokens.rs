//! The tokens file (`CACHE_AUTH_TOKENS_FILE`): who may call, in which tenant, with which scopes.
//!
//! ```toml
//! [[token]]
//! name = "exporter"                           # shown in logs and metrics; the secret never is
//! sha256 = "<hex SHA-256 of the token>"       # and/or: client_cert_subject = "CN=exporter"
//! tenant = "arxos"                            # the namespace this token's calls live in
//! scopes = ["read", "write", "invalidate"]    # "admin": Invalidate all / pattern, and Metrics
//! ```
//!
//! The file holds digests, never tokens. Parsing checks everything an operator can get wrong and names the
//! entry: a malformed file at start stops the server (exit 64); at a reload it is logged and the tokens in
//! use stay.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::scope::{Scope, Scopes};

/// Longest tenant name accepted, in bytes.
pub const MAX_TENANT_BYTES: usize = 128;

/// One `[[token]]` entry, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The name logs and metrics show.
    pub name: String,
    /// SHA-256 of the bearer token, if a bearer token stands for this entry.
    pub sha256: Option<[u8; 32]>,
    /// The client certificate subject that stands for this entry (mutual TLS), normalised.
    pub client_cert_subject: Option<String>,
    /// The tenant (namespace) of its calls.
    pub tenant: String,
    /// What it may do.
    pub scopes: Scopes,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is not the secret, but nothing about a credential is shown.
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    token: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    client_cert_subject: Option<String>,
    tenant: String,
    scopes: Vec<String>,
}

/// Reads and checks a tokens file.
///
/// # Errors
/// The file cannot be read, is not TOML of the documented shape, or an entry is wrong (named in the message,
/// with the token's name and never a secret).
pub fn load(path: &Path) -> Result<Vec<TokenEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
}

/// Parses the text of a tokens file (see [`load`]).
///
/// # Errors
/// See [`load`].
pub fn parse(text: &str) -> Result<Vec<TokenEntry>, String> {
    // toml's messages quote the offending line, which could be a pasted token: keep only the position.
    let shape: FileShape = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!("not a valid tokens file near line {line}: {}", e.message())
        }
        None => format!("not a valid tokens file: {}", e.message()),
    })?;
    if shape.token.is_empty() {
        return Err("no [[token]] entries: every call would be refused".into());
    }
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    let mut subjects = HashSet::new();
    let mut entries = Vec::with_capacity(shape.token.len());
    for (i, raw) in shape.token.into_iter().enumerate() {
        let entry = check(raw).map_err(|e| format!("token[{i}]: {e}"))?;
        if !names.insert(entry.name.clone()) {
            return Err(format!(
                "token[{i}]: the name {:?} is used twice",
                entry.name
            ));
        }
        if let Some(d) = entry.sha256
            && !digests.insert(d)
        {
            return Err(format!(
                "token[{i}] ({}): the same sha256 as another token",
                entry.name
            ));
        }
        if let Some(s) = &entry.client_cert_subject
            && !subjects.insert(s.clone())
        {
            return Err(format!(
                "token[{i}] ({}): the same client_cert_subject as another token",
                entry.name
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn check(raw: RawEntry) -> Result<TokenEntry, String> {
    let name = raw.name;
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err("name must be 1 to 128 printable characters".into());
    }
    let sha256 = raw
        .sha256
        .map(|hex| parse_digest(&hex))
        .transpose()
        .map_err(|e| format!("({name}) sha256 {e}"))?;
    let client_cert_subject = raw
        .client_cert_subject
        .map(|s| normalize_subject(&s))
        .filter(|s| !s.is_empty());
    if sha256.is_none() && client_cert_subject.is_none() {
        return Err(format!(
            "({name}) needs sha256 (a bearer token's digest) or client_cert_subject"
        ));
    }
    let tenant = raw.tenant;
    if tenant.is_empty() || tenant.len() > MAX_TENANT_BYTES || tenant.chars().any(char::is_control)
    {
        return Err(format!(
            "({name}) tenant must be 1 to {MAX_TENANT_BYTES} bytes without control characters"
        ));
    }
    let mut scopes = Scopes::NONE;
    for s in &raw.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            format!("({name}) unknown scope {s:?} (expected read, write, invalidate or admin)")
        })?;
        scopes = scopes.with(scope);
    }
    if scopes == Scopes::NONE {
        return Err(format!("({name}) scopes must name at least one scope"));
    }
    Ok(TokenEntry {
        name,
        sha256,
        client_cert_subject,
        tenant,
        scopes,
    })
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 64 hexadecimal digits (the SHA-256 of the token, e.g. `printf %s \"$TOKEN\" | sha256sum`)".into());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    Ok(out)
}

/// A distinguished name written the way operators do (`CN=exporter,O=Arxos`, `CN = exporter, O = Arxos`),
/// in one form: attributes separated by `, `, no spaces around `=`.
pub fn normalize_subject(subject: &str) -> String {
    subject
        .trim()
        .trim_start_matches('/')
        .split([',', '/'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
            None => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_good_file_parses() {
        let entries = parse(&format!(
            "[[token]]\nname = \"exporter\"\nsha256 = \"{DIGEST}\"\ntenant = \"arxos\"\nscopes = [\"read\", \"write\"]\n\n[[token]]\nname = \"ops\"\nclient_cert_subject = \"CN = ops , O=Arxos\"\ntenant = \"arxos\"\nscopes = [\"admin\"]\n"
        ))
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].sha256.unwrap()[0], 0x9f);
        assert!(entries[0].scopes.has(Scope::Write));
        assert!(!entries[0].scopes.has(Scope::Admin));
        assert_eq!(
            entries[1].client_cert_subject.as_deref(),
            Some("CN=ops, O=Arxos")
        );
        assert!(!format!("{:?}", entries[0]).contains("9f86"));
    }

    #[test]
    fn mistakes_are_named_and_never_quote_a_secret() {
        let cases = [
            ("", "no [[token]]"),
            (
                "[[token]]\nname=\"a\"\ntenant=\"t\"\nscopes=[\"read\"]\n",
                "needs sha256",
            ),
            (
                "[[token]]\nname=\"a\"\nsha256=\"s3cr3t-token\"\ntenant=\"t\"\nscopes=[\"read\"]\n",
                "64 hexadecimal",
            ),
            (
                &format!(
                    "[[token]]\nname=\"a\"\nsha256=\"{DIGEST}\"\ntenant=\"t\"\nscopes=[\"root\"]\n"
                ),
                "unknown scope",
            ),
            (
                &format!(
                    "[[token]]\nname=\"a\"\nsha256=\"{DIGEST}\"\ntenant=\"\"\nscopes=[\"read\"]\n"
                ),
                "tenant must be",
            ),
            (
                &format!("[[token]]\nname=\"a\"\nsha256=\"{DIGEST}\"\ntenant=\"t\"\nscopes=[]\n"),
                "at least one scope",
            ),
            (
                &format!(
                    "[[token]]\nname=\"a\"\nsha256=\"{DIGEST}\"\ntenant=\"t\"\nscopes=[\"read\"]\n[[token]]\nname=\"b\"\nsha256=\"{DIGEST}\"\ntenant=\"t\"\nscopes=[\"read\"]\n"
                ),
                "same sha256",
            ),
            (
                "[[token]]\nname=\"a\"\ntoken=\"s3cr3t-token\"\ntenant=\"t\"\nscopes=[\"read\"]\n",
                "near line",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn subjects_normalise() {
        assert_eq!(
            normalize_subject("/CN=exporter/O=Arxos"),
            "CN=exporter, O=Arxos"
        );
        assert_eq!(normalize_subject("cn=exporter"), "CN=exporter");
    }
}
