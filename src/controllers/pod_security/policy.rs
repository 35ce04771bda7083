//! The pod policy: the Pod Security Standards
//! (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>, the controls Pod
//! Security Admission of Kubernetes 1.34 applies) as a pure check of a pod template that
//! names every field breaking a level. The operator judges each pod a user's spec shapes
//! before it creates the workload, so a Job that the namespace's admission would refuse
//! pod by pod, or that a laxer namespace would run with host access, is never created.
//!
//! Levels are those of the standards: `privileged` allows everything; `baseline` refuses
//! the known privilege escalations (host namespaces, privileged containers, added
//! capabilities beyond the default set, hostPath volumes, host ports, non-default
//! seccomp/AppArmor/SELinux, unsafe sysctls, `procMount`, probe and lifecycle hosts) and
//! allows root; `restricted` adds the hardening (non-root, no privilege escalation, every
//! capability dropped but `NET_BIND_SERVICE`, a seccomp profile, only the usual volume
//! types).

use std::{collections::BTreeMap, fmt, str::FromStr};

use k8s_openapi::api::core::v1::{Container, Probe, SELinuxOptions, SeccompProfile, SecurityContext, Volume};
use k8s_openapi::api::core::v1::{LifecycleHandler, PodSpec, PodTemplateSpec};

/// A level of the Pod Security Standards, from the most to the least permissive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Privileged,
    Baseline,
    #[default]
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => {
                Err(format!("{other:?} is not a pod security level: restricted, baseline or privileged"))
            }
        }
    }
}

/// The level of each namespace: a default, and the namespaces a cluster admin allows
/// another level (`--default-pod-security-level`, `--pod-security-level NAMESPACE=LEVEL`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPolicy {
    pub default: Level,
    pub namespaces: BTreeMap<String, Level>,
}

impl PodPolicy {
    pub fn level(&self, namespace: &str) -> Level {
        self.namespaces.get(namespace).copied().unwrap_or(self.default)
    }
}

/// `NAMESPACE=LEVEL`, one value of `--pod-security-level`.
pub fn parse_namespace_level(s: &str) -> Result<(String, Level), String> {
    let (ns, level) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAMESPACE=LEVEL, e.g. research=baseline"))?;
    if ns.is_empty() {
        return Err(format!("{s:?}: the namespace is empty"));
    }
    Ok((ns.to_string(), level.parse()?))
}

/// One field breaking a level: its path from the pod template
/// (`spec.containers[1].securityContext.privileged`) and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub value: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.value)
    }
}

/// The Event and condition reason of a pod the policy refuses.
pub const REASON: &str = "PodPolicyViolation";
/// Violations named in one message; the rest are counted.
const LISTED: usize = 12;

/// The message refusing a pod, each field named from the resource's spec (`prefix` is the
/// path of the pod template in it, e.g. `spec.trainer.template.`); `None` when nothing
/// breaks the level.
pub fn refusal(found: &[Violation], prefix: &str, level: Level, namespace: &str) -> Option<String> {
    let mut listed: Vec<String> = found.iter().take(LISTED).map(|v| format!("{prefix}{v}")).collect();
    if found.len() > LISTED {
        listed.push(format!("{} more", found.len() - LISTED));
    }
    let verb = match found.len() {
        0 => return None,
        1 => "is",
        _ => "are",
    };
    Some(format!(
        "{} {verb} not allowed by the {level} pod policy of namespace {namespace}",
        listed.join("; ")
    ))
}

/// The capabilities baseline lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// The sysctls baseline allows.
const SAFE_SYSCTLS: [&str; 12] = [
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
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];
const SELINUX_TYPES: [&str; 5] =
    ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Every field of `template` that `level` does not allow, pod-level fields first, then
/// the volumes, then each init container and container in order; empty when it passes.
pub fn violations(level: Level, template: &PodTemplateSpec) -> Vec<Violation> {
    let (Some(spec), true) = (template.spec.as_ref(), level != Level::Privileged) else { return Vec::new() };
    let mut out = Found(Vec::new());
    let restricted = level == Level::Restricted;
    let annotations = template.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    for (key, value) in annotations.into_iter().flatten() {
        let allowed = value.is_empty() || value == "runtime/default" || value.starts_with("localhost/");
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX) && !allowed {
            out.add(format!("metadata.annotations[{key}]"), value);
        }
    }
    pod_level(spec, restricted, &mut out);
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volume(&format!("spec.volumes[{i}]"), v, restricted, &mut out);
    }
    let inits = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    let mains = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c));
    for (path, c) in inits.chain(mains) {
        container(&path, c, spec, restricted, &mut out);
    }
    out.0
}

struct Found(Vec<Violation>);

impl Found {
    fn add(&mut self, path: impl Into<String>, value: impl fmt::Display) {
        self.0.push(Violation { path: path.into(), value: value.to_string() });
    }
}

/// Windows pods are exempt from the Linux-only restricted controls (privilege escalation,
/// seccomp, capabilities), as in Pod Security Admission.
fn is_windows(spec: &PodSpec) -> bool {
    spec.os.as_ref().is_some_and(|os| os.name == "windows")
}

fn confined(p: &SeccompProfile) -> bool {
    p.type_ == "RuntimeDefault" || p.type_ == "Localhost"
}

fn pod_level(spec: &PodSpec, restricted: bool, out: &mut Found) {
    for (field, on) in
        [("hostNetwork", spec.host_network), ("hostPID", spec.host_pid), ("hostIPC", spec.host_ipc)]
    {
        if on == Some(true) {
            out.add(format!("spec.{field}"), true);
        }
    }
    let Some(sc) = spec.security_context.as_ref() else {
        return;
    };
    let at = "spec.securityContext";
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.add(format!("{at}.windowsOptions.hostProcess"), true);
    }
    if let Some(o) = &sc.se_linux_options {
        selinux(&format!("{at}.seLinuxOptions"), o, out);
    }
    if let Some(p) = &sc.app_armor_profile
        && p.type_ != "RuntimeDefault"
        && p.type_ != "Localhost"
    {
        out.add(format!("{at}.appArmorProfile.type"), &p.type_);
    }
    if let Some(p) = &sc.seccomp_profile
        && !confined(p)
    {
        out.add(format!("{at}.seccompProfile.type"), &p.type_);
    }
    for (i, s) in sc.sysctls.iter().flatten().enumerate() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            out.add(format!("{at}.sysctls[{i}].name"), &s.name);
        }
    }
    if restricted {
        if sc.run_as_non_root == Some(false) {
            out.add(format!("{at}.runAsNonRoot"), false);
        }
        if sc.run_as_user == Some(0) {
            out.add(format!("{at}.runAsUser"), 0);
        }
    }
}

fn selinux(at: &str, o: &SELinuxOptions, out: &mut Found) {
    if let Some(t) = &o.type_
        && !SELINUX_TYPES.contains(&t.as_str())
    {
        out.add(format!("{at}.type"), t);
    }
    for (field, value) in [("user", &o.user), ("role", &o.role)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            out.add(format!("{at}.{field}"), v);
        }
    }
}

/// hostPath at any level; at restricted, anything but the usual volume types.
fn volume(at: &str, v: &Volume, restricted: bool, out: &mut Found) {
    if let Some(host) = &v.host_path {
        out.add(format!("{at}.hostPath.path"), &host.path);
        return;
    }
    let allowed = v.config_map.is_some()
        || v.csi.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.ephemeral.is_some()
        || v.image.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some();
    if restricted && !allowed {
        // The one source field set, named as in the API (`nfs`, `iscsi`, ...).
        let source = serde_json::to_value(v)
            .ok()
            .and_then(|j| j.as_object()?.keys().find(|k| *k != "name").cloned())
            .unwrap_or_else(|| "source".into());
        out.add(format!("{at}.{source}"), format!("volume {:?}", v.name));
    }
}

fn container(at: &str, c: &Container, pod: &PodSpec, restricted: bool, out: &mut Found) {
    let default_sc = SecurityContext::default();
    let sc = c.security_context.as_ref().unwrap_or(&default_sc);
    let psc = pod.security_context.clone().unwrap_or_default();
    let sat = format!("{at}.securityContext");
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.add(format!("{sat}.windowsOptions.hostProcess"), true);
    }
    if sc.privileged == Some(true) {
        out.add(format!("{sat}.privileged"), true);
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if let Some(port) = p.host_port.filter(|p| *p != 0) {
            out.add(format!("{at}.ports[{i}].hostPort"), port);
        }
    }
    if let Some(o) = &sc.se_linux_options {
        selinux(&format!("{sat}.seLinuxOptions"), o, out);
    }
    if let Some(p) = &sc.app_armor_profile
        && p.type_ != "RuntimeDefault"
        && p.type_ != "Localhost"
    {
        out.add(format!("{sat}.appArmorProfile.type"), &p.type_);
    }
    if let Some(m) = sc.proc_mount.as_deref().filter(|m| *m != "Default") {
        out.add(format!("{sat}.procMount"), m);
    }
    if let Some(p) = &sc.seccomp_profile
        && !confined(p)
    {
        out.add(format!("{sat}.seccompProfile.type"), &p.type_);
    }
    for (probe, p) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        probe_hosts(&format!("{at}.{probe}"), p.as_ref(), out);
    }
    let lifecycle = c.lifecycle.as_ref();
    for (hook, h) in [
        ("postStart", lifecycle.and_then(|l| l.post_start.as_ref())),
        ("preStop", lifecycle.and_then(|l| l.pre_stop.as_ref())),
    ] {
        handler_hosts(&format!("{at}.lifecycle.{hook}"), h, out);
    }

    let caps = sc.capabilities.clone().unwrap_or_default();
    let linux = !is_windows(pod);
    for (i, add) in caps.add.iter().flatten().enumerate() {
        let allowed = if restricted && linux {
            add == "NET_BIND_SERVICE"
        } else {
            BASELINE_CAPABILITIES.contains(&add.as_str())
        };
        if !allowed {
            out.add(format!("{sat}.capabilities.add[{i}]"), add);
        }
    }
    if !restricted {
        return;
    }
    if linux {
        if sc.allow_privilege_escalation != Some(false) {
            let value =
                sc.allow_privilege_escalation.map_or("unset (must be false)".into(), |v| v.to_string());
            out.add(format!("{sat}.allowPrivilegeEscalation"), value);
        }
        if sc.seccomp_profile.is_none() && psc.seccomp_profile.is_none() {
            out.add(
                format!("{sat}.seccompProfile"),
                "unset here and on the pod (must be RuntimeDefault or Localhost)",
            );
        }
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            let dropped = caps.drop.clone().unwrap_or_default().join(", ");
            out.add(format!("{sat}.capabilities.drop"), format!("[{dropped}] (must include ALL)"));
        }
    }
    if sc.run_as_user == Some(0) {
        out.add(format!("{sat}.runAsUser"), 0);
    }
    let runs_as_root = sc.run_as_user.or(psc.run_as_user) == Some(0);
    match sc.run_as_non_root {
        Some(false) => out.add(format!("{sat}.runAsNonRoot"), false),
        // Unset with root asked for is reported as runAsUser above.
        None if psc.run_as_non_root.is_none() && !runs_as_root => {
            out.add(format!("{sat}.runAsNonRoot"), "unset here and on the pod (must be true)")
        }
        _ => {}
    }
}

fn probe_hosts(at: &str, p: Option<&Probe>, out: &mut Found) {
    let Some(p) = p else { return };
    if let Some(h) = p.http_get.as_ref().and_then(|g| g.host.as_deref()).filter(|h| !h.is_empty()) {
        out.add(format!("{at}.httpGet.host"), h);
    }
    if let Some(h) = p.tcp_socket.as_ref().and_then(|t| t.host.as_deref()).filter(|h| !h.is_empty()) {
        out.add(format!("{at}.tcpSocket.host"), h);
    }
}

fn handler_hosts(at: &str, h: Option<&LifecycleHandler>, out: &mut Found) {
    let Some(h) = h else { return };
    if let Some(host) = h.http_get.as_ref().and_then(|g| g.host.as_deref()).filter(|h| !h.is_empty()) {
        out.add(format!("{at}.httpGet.host"), host);
    }
    if let Some(host) = h.tcp_socket.as_ref().and_then(|t| t.host.as_deref()).filter(|h| !h.is_empty()) {
        out.add(format!("{at}.tcpSocket.host"), host);
    }
}

/// The restricted violations of a bare pod spec, one `path: value` line each (the operator's
/// own pods are checked with it in unit tests).
#[cfg(test)]
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let template = PodTemplateSpec { metadata: None, spec: Some(spec.clone()) };
    violations(Level::Restricted, &template).iter().map(ToString::to_string).collect()
}
