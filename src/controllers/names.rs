//! Names of children derived from more than one name, made so that two resources of one
//! namespace never derive the same one.
//!
//! Joining names with `-` is ambiguous: InferenceService `web` serving version `canary-v1`
//! and `web-canary` serving `v1` would both get Deployment `web-canary-v1`, and `web`'s
//! stable Service `web-stable` is `web-stable`'s own Service. No separator helps: the names
//! joined (InferenceServices, ModelVersions, runs) may hold any character a child's name
//! may, and Services and label values allow nothing else. So each such child is named
//! `<readable>-<hash>`: the readable join, cut to fit, then a short hash of the parts
//! themselves, kept apart. The readable part is for people; the hash keeps names apart.
//! Eight hex digits make an accidental clash between two children of one namespace a
//! one-in-billions event, and even then nothing is taken over: a name held by an object
//! the resource does not control is a `ChildConflict` (see [`super::ownership`]), never
//! written to.

use sha2::{Digest, Sha256};

/// Hex digits of the hash suffix.
const HASH_LEN: usize = 8;

/// `<readable>-<hash of parts>`, at most `max` characters: `readable` is cut (and trailing
/// `-`/`.` trimmed, so the name stays valid) to leave room for the hash. The hash covers
/// `parts` one by one, so `("web", "canary-v1")` and `("web-canary", "v1")` differ.
pub fn unique(readable: &str, parts: &[&str], max: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // No Kubernetes name holds a NUL: the parts cannot run into each other.
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let hash = hex::encode(hasher.finalize());
    let room = max.saturating_sub(HASH_LEN + 1);
    let mut cut = readable.len().min(room);
    while !readable.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = readable[..cut].trim_end_matches(['-', '.']);
    format!("{prefix}-{}", &hash[..HASH_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_different_parts_differ_even_when_their_joins_are_equal() {
        let a = unique("web-canary-v1", &["web", "canary-v1"], 52);
        let b = unique("web-canary-v1", &["web-canary", "v1"], 52);
        assert_ne!(a, b);
        assert!(a.starts_with("web-canary-v1-") && a.len() == "web-canary-v1-".len() + 8, "{a}");
        assert_eq!(a, unique("web-canary-v1", &["web", "canary-v1"], 52), "stable");
    }

    #[test]
    fn long_names_are_cut_to_fit_and_stay_valid() {
        let long = format!("{}-{}", "a".repeat(40), "b".repeat(40));
        let name = unique(&long, &[&long], 52);
        assert_eq!(name.len(), 52);
        let cut_at_dash = unique(&format!("{}-x", "a".repeat(42)), &["p"], 52);
        assert!(!cut_at_dash.contains("--"), "no dash left before the hash: {cut_at_dash}");
        assert!(cut_at_dash.len() <= 52);
    }
}
