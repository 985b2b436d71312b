//! Who is calling: bearer tokens and client certificates mapped to tenants and scopes
//! (`CACHE_AUTH_TOKENS_FILE`, see [`tokens`]).
//!
//! Without a tokens file every call is the *open* caller: the process keyspace (`CACHE_NAMESPACE`) and every
//! scope, as before tokens existed. With one, every `cache.v1.CacheService` call must carry
//! `authorization: Bearer <token>` (or come over mutual TLS with a client certificate whose subject an entry
//! names): the token's SHA-256 is compared in constant time with every digest of the file. The caller's
//! tenant is the namespace of its keyspace (`<prefix>:<tenant>:`), so keys, selectors, patterns and `all`
//! stay inside it, whatever they say. `grpc.health.v1` stays open; reflection too unless
//! `CACHE_REFLECTION=auth`.
//!
//! The file is read again when its modification time changes (checked every second) and on SIGHUP; a file
//! that does not load leaves the tokens in use. New tenants are verified by the backend before their first
//! call ([`crate::backend::Backend::add_keyspaces`]).

mod scope;
pub mod tokens;

pub use scope::{Scope, Scopes};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::error::CacheError;
use crate::keys::Keyspace;
use tokens::TokenEntry;

/// How often the tokens file is checked for a change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Who a call is from: the keyspace it lives in and what it may do.
#[derive(Debug)]
pub struct Caller {
    /// The token's name (`open` without a tokens file).
    pub name: Arc<str>,
    /// The keyspace of its calls.
    pub keyspace: Keyspace,
    scopes: Scopes,
}

impl Caller {
    /// Ok when the caller has `scope`; else `PERMISSION_DENIED` naming it and the call.
    ///
    /// # Errors
    /// [`CacheError::PermissionDenied`].
    pub fn require(&self, scope: Scope, call: &'static str) -> Result<(), CacheError> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            Err(CacheError::PermissionDenied {
                name: self.name.clone(),
                scope,
                call,
            })
        }
    }
}

/// The caller of one call, borrowed: the open caller, or an entry of the token set the call was checked
/// against (held by an `arc-swap` guard: no reference count is touched on the call path).
pub enum CallerRef<'a> {
    /// The open caller (no tokens file).
    Open(&'a Caller),
    /// The `i`th digest's caller.
    Digest(arc_swap::Guard<Arc<TokenSet>>, usize),
    /// The `i`th subject's caller.
    Subject(arc_swap::Guard<Arc<TokenSet>>, usize),
}

impl std::fmt::Debug for CallerRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::ops::Deref for CallerRef<'_> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        match self {
            CallerRef::Open(c) => c,
            CallerRef::Digest(set, i) => &set.digests[*i].1,
            CallerRef::Subject(set, i) => &set.subjects[*i].1,
        }
    }
}

/// The credentials in use.
#[derive(Debug, Default)]
pub struct TokenSet {
    digests: Vec<([u8; 32], Arc<Caller>)>,
    subjects: Vec<(String, Arc<Caller>)>,
}

impl TokenSet {
    fn new(prefix: &str, entries: &[TokenEntry]) -> Self {
        let mut set = Self::default();
        for e in entries {
            let caller = Arc::new(Caller {
                name: e.name.as_str().into(),
                keyspace: Keyspace::new(prefix, &e.tenant),
                scopes: e.scopes,
            });
            if let Some(d) = e.sha256 {
                set.digests.push((d, caller.clone()));
            }
            if let Some(s) = &e.client_cert_subject {
                set.subjects.push((s.clone(), caller));
            }
        }
        set
    }
}

/// The keyspaces of the tenants `entries` name, each once.
fn tenant_keyspaces(prefix: &str, entries: &[TokenEntry]) -> Vec<Keyspace> {
    let mut out: Vec<Keyspace> = Vec::new();
    for e in entries {
        let ks = Keyspace::new(prefix, &e.tenant);
        if !out.contains(&ks) {
            out.push(ks);
        }
    }
    out
}

/// Authentication: the open caller, or the tokens of a file kept current.
#[derive(Debug)]
pub struct Auth {
    prefix: String,
    file: Option<PathBuf>,
    open: Arc<Caller>,
    set: ArcSwap<TokenSet>,
    /// Tenants' keyspaces at start (the backend's bookkeeping starts with them).
    initial: Vec<Keyspace>,
    /// Calls refused: no or unknown credentials.
    pub unauthenticated: AtomicU64,
    /// Calls refused: outside the token's scopes.
    pub denied: AtomicU64,
    /// Reloads of the file that failed.
    pub reload_failures: AtomicU64,
}

impl Auth {
    /// No tokens file: every call is the open caller in `keyspace`.
    pub fn open(keyspace: Keyspace) -> Self {
        Self {
            prefix: String::new(),
            file: None,
            open: Arc::new(Caller {
                name: "open".into(),
                keyspace: keyspace.clone(),
                scopes: Scopes::ALL,
            }),
            set: ArcSwap::from_pointee(TokenSet::default()),
            initial: vec![keyspace],
            unauthenticated: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// Loads the tokens file `file`; keys live under `prefix`, each tenant's as `<prefix>:<tenant>:`.
    ///
    /// # Errors
    /// The file does not load (see [`tokens::load`]).
    pub fn from_file(prefix: &str, namespace: &str, file: PathBuf) -> Result<Self, String> {
        let entries = tokens::load(&file)?;
        warn_if_readable_by_others(&file);
        let mut auth = Self::open(Keyspace::new(prefix, namespace));
        auth.prefix = prefix.to_owned();
        auth.initial = tenant_keyspaces(prefix, &entries);
        auth.set = ArcSwap::from_pointee(TokenSet::new(prefix, &entries));
        tracing::info!(file = %file.display(), tokens = entries.len(), tenants = auth.initial.len(), "calls need a token of the tokens file");
        auth.file = Some(file);
        Ok(auth)
    }

    /// Whether calls need credentials.
    pub fn required(&self) -> bool {
        self.file.is_some()
    }

    /// The keyspaces calls may live in at start.
    pub fn keyspaces(&self) -> Vec<Keyspace> {
        self.initial.clone()
    }

    /// Who sent a call with these headers over a connection with this client certificate subject.
    ///
    /// # Errors
    /// [`CacheError::Unauthenticated`] without credentials the file names.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer_subject: Option<&str>,
    ) -> Result<CallerRef<'_>, CacheError> {
        if self.file.is_none() {
            return Ok(CallerRef::Open(&self.open));
        }
        let set = self.set.load();
        let found = match metadata.get("authorization") {
            Some(value) => match bearer(value.as_bytes()) {
                Some(token) => {
                    let digest = ring::digest::digest(&ring::digest::SHA256, token);
                    let digest: &[u8; 32] =
                        digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
                    // Every digest is compared, each in constant time.
                    let mut found = None;
                    for (i, (d, _)) in set.digests.iter().enumerate() {
                        if constant_time_eq(d, digest) {
                            found = Some(i);
                        }
                    }
                    match found {
                        Some(i) => Ok(CallerRef::Digest(set, i)),
                        None => Err(CacheError::Unauthenticated("the bearer token is not valid")),
                    }
                }
                None => Err(CacheError::Unauthenticated(
                    "the authorization header must be `Bearer <token>`",
                )),
            },
            None => match peer_subject
                .and_then(|s| set.subjects.iter().position(|(subject, _)| subject == s))
            {
                Some(i) => Ok(CallerRef::Subject(set, i)),
                None => Err(CacheError::Unauthenticated(
                    "this server needs credentials: send `authorization: Bearer <token>`",
                )),
            },
        };
        match found {
            Ok(caller) => Ok(caller),
            Err(e) => {
                self.unauthenticated.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reads the file again and swaps the tokens in once the backend has taken on any new tenant. The
    /// tokens in use stay when the file does not load or the backend cannot take the tenants on yet.
    ///
    /// # Errors
    /// Why the new tokens are not in use (logged by the caller).
    pub async fn reload(&self, backend: &dyn Backend) -> Result<usize, String> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let entries = tokens::load(file)?;
        backend
            .add_keyspaces(&tenant_keyspaces(&self.prefix, &entries))
            .await
            .map_err(|e| format!("the new tenants cannot be verified yet: {e}"))?;
        self.set
            .store(Arc::new(TokenSet::new(&self.prefix, &entries)));
        Ok(entries.len())
    }

    /// Keeps the tokens current until `cancel`: a changed modification time (checked every [`RECHECK`])
    /// or SIGHUP reads the file again; a reload that failed is tried again every [`RECHECK`] until the file
    /// changes or loads.
    pub async fn watch(self: Arc<Self>, backend: Arc<dyn Backend>, cancel: CancellationToken) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let modified = || std::fs::metadata(&file).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified();
        let mut pending = false;
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(RECHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hup => true,
                () = cancel.cancelled() => return,
            };
            let now = modified();
            if !forced && !pending && now == seen {
                continue;
            }
            seen = now;
            match self.reload(backend.as_ref()).await {
                Ok(n) => {
                    pending = false;
                    tracing::info!(file = %file.display(), tokens = n, "tokens file loaded again");
                }
                Err(e) => {
                    if !pending {
                        self.reload_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "tokens file not loaded: the tokens in use stay");
                    }
                    pending = true;
                }
            }
        }
    }
}

/// Whether two digests are equal, in time independent of where they differ: the words' differences are
/// or-ed together, and the compiler cannot see through the result to stop early.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let word = |d: &[u8; 32], i: usize| {
        u64::from_ne_bytes(d[8 * i..8 * i + 8].try_into().expect("8 bytes"))
    };
    let diff = (0..4).fold(0u64, |acc, i| acc | (word(a, i) ^ word(b, i)));
    std::hint::black_box(diff) == 0
}

/// The token of an `authorization: Bearer <token>` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = (value.get(..7)?, value.get(7..)?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(file)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %file.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the tokens file is readable by others than its owner: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &std::path::Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(auth: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        if let Some(a) = auth {
            m.insert("authorization", a.parse().unwrap());
        }
        m
    }

    fn hex(token: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn auth(dir: &tempfile::TempDir) -> Auth {
        let file = dir.path().join("tokens.toml");
        std::fs::write(
            &file,
            format!(
                "[[token]]\nname=\"reader\"\nsha256=\"{}\"\ntenant=\"a\"\nscopes=[\"read\"]\n[[token]]\nname=\"ops\"\nclient_cert_subject=\"CN=ops\"\ntenant=\"b\"\nscopes=[\"admin\"]\n",
                hex("t0ken-a")
            ),
        )
        .unwrap();
        Auth::from_file("cache", "default", file).unwrap()
    }

    #[test]
    fn tokens_and_subjects_map_to_tenants_and_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth(&dir);
        let reader = auth
            .authenticate(&metadata(Some("Bearer t0ken-a")), None)
            .unwrap();
        assert_eq!(reader.keyspace.base(), "cache:a:");
        assert!(reader.require(Scope::Read, "Get").is_ok());
        let denied = reader.require(Scope::Write, "Set").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.to_string().contains("\"write\""), "{denied}");
        let ops = auth.authenticate(&metadata(None), Some("CN=ops")).unwrap();
        assert_eq!(ops.keyspace.base(), "cache:b:");
        for bad in [
            metadata(None),
            metadata(Some("Bearer t0ken-b")),
            metadata(Some("Basic t0ken-a")),
            metadata(Some("Bearer ")),
        ] {
            let err = auth.authenticate(&bad, None).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(!err.to_string().contains("t0ken"), "{err}");
        }
        // A token wins over the certificate: a bad token is refused even over a known certificate.
        assert!(
            auth.authenticate(&metadata(Some("Bearer nope")), Some("CN=ops"))
                .is_err()
        );
        assert_eq!(auth.unauthenticated.load(Ordering::Relaxed), 5);
        assert_eq!(auth.keyspaces().len(), 2);
    }

    #[test]
    fn without_a_file_every_call_is_open() {
        let auth = Auth::open(Keyspace::new("cache", "default"));
        let caller = auth.authenticate(&metadata(None), None).unwrap();
        assert_eq!(caller.keyspace.base(), "cache:default:");
        assert!(caller.require(Scope::Admin, "Metrics").is_ok());
        assert!(!auth.required());
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Token abc"), None);
    }
}
