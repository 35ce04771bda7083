//! Small types shared by more than one kind.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Reference to an object by name in the same namespace as the referring resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object, in the referring resource's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl LocalRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// Values of the manual-control annotations (`mlops.dev/promote`, `mlops.dev/abort`,
/// `mlops.dev/retry`) the operator has already acted upon. An annotation whose value
/// equals the one recorded here is ignored, so it may stay in Git; write a new value
/// (for example the current time) to ask again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualActions {
    /// Last handled value of `mlops.dev/promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<String>,
    /// Last handled value of `mlops.dev/abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<String>,
    /// Last handled value of `mlops.dev/retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
}

/// Whether an annotation asks for an action not yet handled: it is set, non-empty, and
/// differs from the value recorded as handled.
pub fn annotation_pending(annotation: Option<&str>, handled: Option<&str>) -> bool {
    match annotation.map(str::trim) {
        Some(v) if !v.is_empty() => Some(v) != handled,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_pending_acts_once_per_value() {
        assert!(!annotation_pending(None, None));
        assert!(!annotation_pending(Some(""), None));
        assert!(annotation_pending(Some("2025-01-01T00:00:00Z"), None));
        assert!(!annotation_pending(Some("a"), Some("a")));
        assert!(annotation_pending(Some("b"), Some("a")));
    }
}
