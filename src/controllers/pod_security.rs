//! The security settings of every pod the operator creates, as one pure function: the pod
//! passes the restricted Pod Security Standard and runs under a real kubelet with a
//! read-only root filesystem, whatever user its image names.
//!
//! [`secure_pod`] only fills in what the pod leaves unset. A value the user gave (in a
//! TrainingJob's `trainer.template`, `trainer.env`, or an InferenceService's `runtime.env`)
//! is kept, field by field: the namespace's admission (Pod Security Admission) judges the
//! result against whatever policy the cluster has.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PodSecurityContext, PodSpec, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};

/// Where the operator's containers get scratch space (an emptyDir), the root filesystem
/// being read-only.
pub const TMP_DIR: &str = "/tmp";
/// `HOME` of the operator's containers when none is set: an emptyDir, because a root image
/// run as an unprivileged user has no writable home (python, pip and model libraries keep
/// caches and configuration there).
pub const HOME_DIR: &str = "/home/mlops";
const TMP_VOLUME: &str = "mlops-tmp";
const HOME_VOLUME: &str = "mlops-home";

/// The user and group a pod runs as when it names none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: i64,
    pub group: i64,
}

/// The unprivileged user of the operator's own images (distroless `nonroot`). Also the
/// default of trainers: a root image (`python:3.11`, PyTorch) runs as this user, which a
/// kubelet accepts under `runAsNonRoot` where the image's own root user is refused.
pub const NONROOT: RunAs = RunAs { user: 65532, group: 65532 };

pub fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }
}

/// Fills in the restricted defaults `pod` leaves unset. Pod level: `runAsNonRoot: true`,
/// `runAsUser`/`runAsGroup`/`fsGroup` from `run_as`, seccomp `RuntimeDefault`. Every
/// container and init container: `allowPrivilegeEscalation: false`, capabilities
/// `drop: [ALL]`. The containers named in `own` (those the operator defines, not a user's
/// sidecars) also get a read-only root filesystem, an emptyDir at [`TMP_DIR`] unless they
/// mount something there, and `HOME` on an emptyDir at [`HOME_DIR`] unless they set `HOME`.
pub fn secure_pod(pod: &mut PodSpec, run_as: RunAs, own: &[&str]) {
    let sc = pod.security_context.get_or_insert_with(PodSecurityContext::default);
    sc.run_as_non_root.get_or_insert(true);
    sc.run_as_user.get_or_insert(run_as.user);
    sc.run_as_group.get_or_insert(run_as.group);
    // The group of the pod's writable volumes (claims, emptyDirs), so the user can write them.
    sc.fs_group.get_or_insert(run_as.group);
    sc.seccomp_profile.get_or_insert_with(runtime_default_seccomp);

    let mut volumes = Vec::new();
    for c in pod.init_containers.iter_mut().flatten().chain(pod.containers.iter_mut()) {
        restrict(c);
        if own.contains(&c.name.as_str()) {
            for volume in writable_dirs(c) {
                if !volumes.contains(&volume) {
                    volumes.push(volume);
                }
            }
        }
    }
    for name in volumes {
        let existing = pod.volumes.get_or_insert_with(Vec::new);
        if !existing.iter().any(|v| v.name == name) {
            existing.push(Volume {
                name: name.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
        }
    }
}

/// The restricted profile's container fields, where unset.
fn restrict(c: &mut Container) {
    let sc = c.security_context.get_or_insert_with(SecurityContext::default);
    sc.allow_privilege_escalation.get_or_insert(false);
    let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
    caps.drop.get_or_insert_with(|| vec!["ALL".into()]);
}

/// Read-only root, and the emptyDirs a program writes to instead; returns the volumes the
/// container now mounts.
fn writable_dirs(c: &mut Container) -> Vec<&'static str> {
    let sc = c.security_context.get_or_insert_with(SecurityContext::default);
    sc.read_only_root_filesystem.get_or_insert(true);
    let mut used = Vec::new();
    // A second mount at the same path is refused by the kubelet: the container's own wins.
    if !mounts_at(c, TMP_DIR) {
        c.volume_mounts.get_or_insert_with(Vec::new).push(mount(TMP_VOLUME, TMP_DIR));
        used.push(TMP_VOLUME);
    }
    if !c.env.iter().flatten().any(|e| e.name == "HOME") {
        c.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: "HOME".into(),
            value: Some(HOME_DIR.into()),
            value_from: None,
        });
        if !mounts_at(c, HOME_DIR) {
            c.volume_mounts.get_or_insert_with(Vec::new).push(mount(HOME_VOLUME, HOME_DIR));
            used.push(HOME_VOLUME);
        }
    }
    used
}

fn mounts_at(c: &Container, path: &str) -> bool {
    c.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == path)
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount { name: volume.into(), mount_path: path.into(), ..VolumeMount::default() }
}

#[cfg(test)]
pub mod restricted;
#[cfg(test)]
mod tests;
