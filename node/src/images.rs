//! The image → local executable mapping: a pod's image names which program on this host
//! plays that image. Loaded from a YAML file:
//!
//! ```yaml
//! images:
//!   "ghcr.io/mlops-dev/mlops-runtime:*": /usr/local/bin/mlops-runtime
//!   "python:3*": python3
//!   "busybox": sh        # no tag in the pattern: any tag of that image
//! ```
//!
//! Patterns are globs (`*` any run of characters, `?` one character). An exact match wins,
//! otherwise the most specific (longest) matching pattern.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
pub struct ImageMap {
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

impl ImageMap {
    pub fn load(path: &Path) -> anyhow::Result<ImageMap> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading image map {}: {e}", path.display()))?;
        let map: ImageMap = serde_yaml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("parsing image map {}: {e}", path.display()))?;
        Ok(map)
    }

    /// The executable that plays `image`, if any pattern matches.
    pub fn resolve(&self, image: &str) -> Option<&str> {
        if let Some(exe) = self.images.get(image) {
            return Some(exe);
        }
        self.images
            .iter()
            .filter(|(pattern, _)| image_matches(pattern, image))
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, exe)| exe.as_str())
    }
}

/// Whether `image` matches `pattern`; a pattern without tag or digest matches every tag.
pub fn image_matches(pattern: &str, image: &str) -> bool {
    if glob(pattern.as_bytes(), image.as_bytes()) {
        return true;
    }
    let has_tag = pattern.contains('@') || pattern.rsplit('/').next().is_some_and(|last| last.contains(':'));
    if !has_tag {
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        return glob(pattern.as_bytes(), repo.as_bytes());
    }
    false
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with single-star backtracking.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> ImageMap {
        ImageMap { images: entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn globs_match() {
        assert!(glob(b"python:3*", b"python:3.12-slim"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"ghcr.io/x/y:?", b"ghcr.io/x/y:1"));
        assert!(!glob(b"python:3*", b"pythonista:3"));
    }

    #[test]
    fn pattern_without_tag_matches_any_tag() {
        assert!(image_matches("busybox", "busybox:1.36"));
        assert!(image_matches("busybox", "busybox"));
        assert!(image_matches("localhost:5000/app", "localhost:5000/app:v1"));
        assert!(image_matches("app", "app@sha256:abc"));
        assert!(!image_matches("busybox:1.35", "busybox:1.36"));
        assert!(!image_matches("localhost:5000/app", "localhost:5000/other:v1"));
    }

    #[test]
    fn exact_then_most_specific() {
        let m = map(&[
            ("python:3*", "python3"),
            ("python:3.11*", "python3.11"),
            ("ghcr.io/mlops-dev/mlops-runtime:*", "/opt/mlops-runtime"),
            ("python:3.12", "exact"),
        ]);
        assert_eq!(m.resolve("python:3.12"), Some("exact"));
        assert_eq!(m.resolve("python:3.11-slim"), Some("python3.11"));
        assert_eq!(m.resolve("python:3.13"), Some("python3"));
        assert_eq!(m.resolve("ghcr.io/mlops-dev/mlops-runtime:0.1.0"), Some("/opt/mlops-runtime"));
        assert_eq!(m.resolve("nginx:1"), None);
    }

    #[test]
    fn parses_yaml() {
        let m: ImageMap = serde_yaml::from_str("images:\n  \"python:3*\": python3\n").unwrap();
        assert_eq!(m.resolve("python:3.12"), Some("python3"));
    }
}
