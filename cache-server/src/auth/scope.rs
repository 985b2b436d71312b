//! What a caller may do: the scopes of the tokens file, and which one each call needs.

use std::fmt;

/// One scope of the tokens file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Get and GetMany.
    Read,
    /// Set and SetMany.
    Write,
    /// Invalidate by key or selector.
    Invalidate,
    /// Invalidate `all` and `pattern` (within the tenant), and Metrics.
    Admin,
}

impl Scope {
    /// The scope a tokens file names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "write" => Self::Write,
            "invalidate" => Self::Invalidate,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    /// The name the tokens file and error messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Invalidate => "invalidate",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope.
    pub const NONE: Self = Self(0);
    /// Every scope (the caller of a server without a tokens file).
    pub const ALL: Self = Self(0b1111);

    /// This set and `scope`.
    #[must_use]
    pub fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }

    /// Whether `scope` is in the set.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = [Scope::Read, Scope::Write, Scope::Invalidate, Scope::Admin];
        f.debug_set()
            .entries(all.into_iter().filter(|s| self.has(*s)).map(Scope::as_str))
            .finish()
    }
}
