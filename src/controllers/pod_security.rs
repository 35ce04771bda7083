//! The security settings of every pod the operator creates, as one pure function, and the
//! pod policy that judges what a user's spec puts into them ([`policy`]).
//!
//! [`secure_pod`] only fills in what the pod leaves unset, so the pod passes the restricted
//! Pod Security Standard and runs under a real kubelet with a read-only root filesystem,
//! whatever user its image names. A value the user gave (in a TrainingJob's
//! `trainer.template`, `trainer.env`, or an InferenceService's `runtime.env`) is kept, field
//! by field, and no default contradicts it: a pod that asks for root gets no `runAsNonRoot`,
//! a privileged container no `allowPrivilegeEscalation: false`. Whether such a pod may be
//! created at all is the pod policy's decision, before anything is applied.

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

/// Fills in the restricted defaults `pod` leaves unset. Pod level: no service-account token
/// (`automountServiceAccountToken: false`), seccomp `RuntimeDefault`, `fsGroup` from
/// `run_as`, and `runAsNonRoot: true` with `runAsUser`/`runAsGroup` from `run_as`. Every
/// container and init container: `allowPrivilegeEscalation: false` (unless privileged or
/// adding `SYS_ADMIN`, which the API server refuses together with it), capabilities
/// `drop: [ALL]`. The containers named in `own` (those the operator defines, not a user's
/// sidecars) also get a read-only root filesystem, an emptyDir at [`TMP_DIR`] unless they
/// mount something there, and `HOME` on an emptyDir at [`HOME_DIR`] unless they set `HOME`.
///
/// A container asking for root (`runAsNonRoot: false` or `runAsUser: 0`, its own or the
/// pod's) gets no user defaults: `runAsNonRoot: false` alone runs the image's own user. The
/// other containers of such a pod get the user defaults on their own security context.
pub fn secure_pod(pod: &mut PodSpec, run_as: RunAs, own: &[&str]) {
    pod.automount_service_account_token.get_or_insert(false);
    let psc = pod.security_context.clone().unwrap_or_default();
    let asks_root = |c: &Container| {
        let sc = c.security_context.clone().unwrap_or_default();
        sc.run_as_non_root.or(psc.run_as_non_root) == Some(false)
            || sc.run_as_user.or(psc.run_as_user) == Some(0)
    };
    let any_root = pod.init_containers.iter().flatten().chain(&pod.containers).any(asks_root);
    let sc = pod.security_context.get_or_insert_with(PodSecurityContext::default);
    if !any_root {
        sc.run_as_non_root.get_or_insert(true);
        sc.run_as_user.get_or_insert(run_as.user);
        sc.run_as_group.get_or_insert(run_as.group);
    }
    // The group of the pod's writable volumes (claims, emptyDirs), so the user can write them.
    sc.fs_group.get_or_insert(run_as.group);
    sc.seccomp_profile.get_or_insert_with(runtime_default_seccomp);

    let mut volumes = Vec::new();
    for c in pod.init_containers.iter_mut().flatten().chain(pod.containers.iter_mut()) {
        if any_root && !asks_root(c) {
            let sc = c.security_context.get_or_insert_with(SecurityContext::default);
            sc.run_as_non_root.get_or_insert(true);
            if psc.run_as_user.is_none() {
                sc.run_as_user.get_or_insert(run_as.user);
            }
            if psc.run_as_group.is_none() {
                sc.run_as_group.get_or_insert(run_as.group);
            }
        }
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

/// The restricted profile's container fields, where unset and not contradicting what is set.
fn restrict(c: &mut Container) {
    let sc = c.security_context.get_or_insert_with(SecurityContext::default);
    let adds_sys_admin = sc
        .capabilities
        .iter()
        .flat_map(|c| c.add.iter().flatten())
        .any(|a| a == "SYS_ADMIN" || a == "CAP_SYS_ADMIN");
    if sc.privileged != Some(true) && !adds_sys_admin {
        sc.allow_privilege_escalation.get_or_insert(false);
    }
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

pub mod policy;
#[cfg(test)]
mod tests;
