//! [`InvalidField`] and the checks on request text fields that produce it.

use super::MAX_COMPONENT_BYTES;

/// A caller mistake in a request field, mapped to `INVALID_ARGUMENT`; `field` is the path in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `key.id` or `requests[3].key.format`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, e.g. `requests[3].` for batch calls.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Checks one key component; `field` names it in the error (built only on error: this runs on every call).
pub(super) fn check_component(
    value: &str,
    required: bool,
    field: impl FnOnce() -> String,
) -> Result<(), InvalidField> {
    if value.is_empty() {
        return if required {
            Err(InvalidField::new(field(), "must not be empty"))
        } else {
            Ok(())
        };
    }
    check_text(value, MAX_COMPONENT_BYTES, field)
}

/// Checks a text field: at most `max` bytes, no control characters. `field` names it in the error (built
/// only on error).
pub fn check_text(
    value: &str,
    max: usize,
    field: impl FnOnce() -> String,
) -> Result<(), InvalidField> {
    if value.len() > max {
        return Err(InvalidField::new(
            field(),
            format!("is {} bytes, more than {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field(),
            "must not contain control characters",
        ));
    }
    Ok(())
}
