//! Test-only: the "restricted" Pod Security Standard
//! (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>, baseline and
//! restricted controls, latest version) as a pure check of a pod spec, so every kind of pod
//! the operator renders is judged by the rules Pod Security Admission applies, without a
//! cluster. Pod metadata (the AppArmor annotations) is not part of a `PodSpec`; the operator
//! sets none.

use k8s_openapi::api::core::v1::{Container, PodSpec, SELinuxOptions, SeccompProfile, SecurityContext};

/// The sysctls the baseline profile allows.
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SELINUX_TYPES: [&str; 5] =
    ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// Every way `pod` breaks the restricted profile, one line each; empty when it passes.
pub fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let psc = pod.security_context.clone().unwrap_or_default();

    // Baseline: host namespaces, HostProcess, hostPath, sysctls, pod-level profiles.
    for (field, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
        (
            "securityContext.windowsOptions.hostProcess",
            psc.windows_options.as_ref().and_then(|w| w.host_process),
        ),
    ] {
        if on == Some(true) {
            out.push(format!("pod: {field} is true"));
        }
    }
    for s in psc.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            out.push(format!("pod: sysctl {} is not in the safe set", s.name));
        }
    }
    if let Some(why) = psc.se_linux_options.as_ref().and_then(selinux_problem) {
        out.push(format!("pod: {why}"));
    }
    if let Some(t) = psc.app_armor_profile.as_ref().map(|p| p.type_.as_str())
        && t != "RuntimeDefault"
        && t != "Localhost"
    {
        out.push(format!("pod: appArmorProfile.type {t}"));
    }
    for v in pod.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        if !allowed {
            out.push(format!(
                "volume {}: type not allowed (hostPath and other node or network volumes)",
                v.name
            ));
        }
    }

    // Restricted, pod level.
    let pod_seccomp_ok = psc.seccomp_profile.as_ref().is_some_and(confined);
    if psc.seccomp_profile.as_ref().is_some_and(|p| !confined(p)) {
        out.push("pod: seccompProfile.type must be RuntimeDefault or Localhost".into());
    }
    let pod_non_root = psc.run_as_non_root == Some(true);
    if psc.run_as_user == Some(0) {
        out.push("pod: runAsUser is 0".into());
    }

    let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        container_violations(c, &sc, pod_seccomp_ok, pod_non_root, &mut out);
    }
    out
}

fn container_violations(
    c: &Container,
    sc: &SecurityContext,
    pod_seccomp_ok: bool,
    pod_non_root: bool,
    out: &mut Vec<String>,
) {
    let mut bad = |why: String| out.push(format!("container {}: {why}", c.name));
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        bad("windowsOptions.hostProcess is true".into());
    }
    if sc.privileged == Some(true) {
        bad("privileged".into());
    }
    for p in c.ports.iter().flatten() {
        if p.host_port.is_some_and(|h| h != 0) {
            bad(format!("hostPort {}", p.host_port.unwrap_or_default()));
        }
    }
    if let Some(why) = sc.se_linux_options.as_ref().and_then(selinux_problem) {
        bad(why);
    }
    if let Some(t) = sc.app_armor_profile.as_ref().map(|p| p.type_.as_str())
        && t != "RuntimeDefault"
        && t != "Localhost"
    {
        bad(format!("appArmorProfile.type {t}"));
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        bad(format!("procMount {}", sc.proc_mount.as_deref().unwrap_or_default()));
    }
    if sc.allow_privilege_escalation != Some(false) {
        bad("allowPrivilegeEscalation must be false".into());
    }
    match &sc.seccomp_profile {
        Some(p) if !confined(p) => bad("seccompProfile.type must be RuntimeDefault or Localhost".into()),
        None if !pod_seccomp_ok => bad("no seccompProfile here or on the pod".into()),
        _ => {}
    }
    match sc.run_as_non_root {
        Some(false) => bad("runAsNonRoot is false".into()),
        None if !pod_non_root => bad("runAsNonRoot is not true here or on the pod".into()),
        _ => {}
    }
    if sc.run_as_user == Some(0) {
        bad("runAsUser is 0".into());
    }
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.drop.iter().flatten().any(|d| d == "ALL") {
        bad("capabilities must drop ALL".into());
    }
    for add in caps.add.iter().flatten().filter(|a| *a != "NET_BIND_SERVICE") {
        bad(format!("adds capability {add}"));
    }
}

fn confined(p: &SeccompProfile) -> bool {
    p.type_ == "RuntimeDefault" || p.type_ == "Localhost"
}

fn selinux_problem(o: &SELinuxOptions) -> Option<String> {
    if let Some(t) = &o.type_
        && !SELINUX_TYPES.contains(&t.as_str())
    {
        return Some(format!("seLinuxOptions.type {t}"));
    }
    if o.user.as_deref().is_some_and(|u| !u.is_empty()) || o.role.as_deref().is_some_and(|r| !r.is_empty()) {
        return Some("seLinuxOptions.user or role is set".into());
    }
    None
}
