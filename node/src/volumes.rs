//! PersistentVolumeClaim volumes on the local node. A claim bound to a `hostPath` or
//! `local` PersistentVolume is that host folder. A host process cannot see a mount at the
//! pod's path, so each mount path the container names in its environment and arguments is
//! rewritten to the host folder (as headless Service names are rewritten to pod
//! addresses). Other volume kinds are not mounted at all (see the README).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PersistentVolume, PersistentVolumeClaim, Pod};

/// Claim name → host folder, for the claims the pod's volumes name.
pub type Claims = BTreeMap<String, String>;

/// The claims of the pod's `persistentVolumeClaim` volumes.
pub fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
        .collect()
}

/// The host folder of a bound claim, or why there is none (yet).
pub fn host_folder(
    claim: &str,
    pvc: Option<&PersistentVolumeClaim>,
    pv: Option<&PersistentVolume>,
) -> Result<String, String> {
    let Some(pvc) = pvc else { return Err(format!("persistentvolumeclaim \"{claim}\" not found")) };
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    let (true, Some(volume)) = (bound, volume) else {
        return Err(format!("waiting for persistentvolumeclaim \"{claim}\" to be bound"));
    };
    let spec = pv.and_then(|pv| pv.spec.as_ref());
    spec.and_then(|s| {
        s.host_path.as_ref().map(|h| h.path.clone()).or_else(|| s.local.as_ref().map(|l| l.path.clone()))
    })
    .ok_or_else(|| {
        format!(
            "persistentvolume \"{volume}\" is neither hostPath nor local: the local node mounts only those"
        )
    })
}

/// (mount path in the pod, host folder) for each of the container's mounts of a claim,
/// longest mount path first so nested mounts win.
pub fn host_mounts(pod: &Pod, c: &Container, claims: &Claims) -> Vec<(String, String)> {
    let volume_claims: BTreeMap<&str, &str> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| (v.name.as_str(), c.claim_name.as_str())))
        .collect();
    let mut out: Vec<(String, String)> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let folder = claims.get(*volume_claims.get(m.name.as_str())?)?;
            let host = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => format!("{}/{sub}", folder.trim_end_matches('/')),
                None => folder.clone(),
            };
            Some((m.mount_path.trim_end_matches('/').to_string(), host.trim_end_matches('/').to_string()))
        })
        .collect();
    out.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    out
}

/// `value` with every mount path (at a path boundary) replaced by its host folder.
pub fn rewrite_paths(value: &str, mounts: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    'scan: while !rest.is_empty() {
        for (path, host) in mounts {
            if let Some(after) = rest.strip_prefix(path.as_str())
                && (after.is_empty() || after.starts_with('/'))
                && !out.ends_with(|c: char| c.is_alphanumeric() || c == '.' || c == '_' || c == '-')
            {
                out.push_str(host);
                rest = after;
                continue 'scan;
            }
        }
        let next = rest.chars().next().expect("non-empty");
        out.push(next);
        rest = &rest[next.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mount_paths_become_host_folders_at_path_boundaries() {
        let mounts = vec![("/mnt/mlops/dataset".to_string(), "/tmp/pv/data".to_string())];
        assert_eq!(
            rewrite_paths("file:///mnt/mlops/dataset/iris.csv", &mounts),
            "file:///tmp/pv/data/iris.csv"
        );
        assert_eq!(rewrite_paths("/mnt/mlops/dataset", &mounts), "/tmp/pv/data");
        assert_eq!(
            rewrite_paths("/mnt/mlops/datasets/x", &mounts),
            "/mnt/mlops/datasets/x",
            "not a boundary"
        );
        assert_eq!(
            rewrite_paths("/x/mnt/mlops/dataset/y", &mounts),
            "/x/mnt/mlops/dataset/y",
            "not at the start"
        );
        assert_eq!(rewrite_paths("a=/mnt/mlops/dataset/b", &mounts), "a=/tmp/pv/data/b");
    }

    #[test]
    fn a_bound_hostpath_claim_is_its_folder() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "spec": {"volumeName": "pv-1"}, "status": {"phase": "Bound"}}))
        .unwrap();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "spec": {"hostPath": {"path": "/tmp/pv"}}}))
        .unwrap();
        assert_eq!(host_folder("data", Some(&pvc), Some(&pv)), Ok("/tmp/pv".into()));
        let pending: PersistentVolumeClaim =
            serde_json::from_value(json!({"status": {"phase": "Pending"}})).unwrap();
        assert!(host_folder("data", Some(&pending), None).unwrap_err().contains("to be bound"));
        let nfs: PersistentVolume =
            serde_json::from_value(json!({"spec": {"nfs": {"server": "s", "path": "/"}}})).unwrap();
        assert!(
            host_folder("data", Some(&pvc), Some(&nfs)).unwrap_err().contains("neither hostPath nor local")
        );
        assert!(host_folder("data", None, None).unwrap_err().contains("not found"));
    }

    #[test]
    fn a_containers_claim_mounts_with_sub_paths() {
        let pod: Pod = serde_json::from_value(json!({
            "spec": {"containers": [{"name": "c", "volumeMounts": [
                        {"name": "d", "mountPath": "/mnt/d"},
                        {"name": "d", "mountPath": "/mnt/d/sub", "subPath": "inner"},
                        {"name": "scratch", "mountPath": "/scratch"}]}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                                 {"name": "scratch", "emptyDir": {}}]}}))
        .unwrap();
        assert_eq!(claim_names(&pod), ["data"]);
        let claims = Claims::from([("data".to_string(), "/tmp/pv/".to_string())]);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            host_mounts(&pod, c, &claims),
            [
                ("/mnt/d/sub".to_string(), "/tmp/pv/inner".to_string()),
                ("/mnt/d".to_string(), "/tmp/pv".to_string())
            ]
        );
    }
}
