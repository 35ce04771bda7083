use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use serde_json::{Value, json};

use super::{
    policy::{
        Level, PodPolicy, Violation, parse_namespace_level, refusal, restricted_violations, violations,
    },
    *,
};

fn pod(spec: Value) -> PodSpec {
    serde_json::from_value(spec).unwrap()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.init_containers.iter().flatten().chain(&pod.containers).find(|c| c.name == name).unwrap()
}

fn mount_paths(c: &Container) -> Vec<&str> {
    c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect()
}

fn home(c: &Container) -> Option<&str> {
    c.env.iter().flatten().find(|e| e.name == "HOME").and_then(|e| e.value.as_deref())
}

fn template(value: Value) -> PodTemplateSpec {
    serde_json::from_value(value).unwrap()
}

fn paths(found: &[Violation]) -> Vec<String> {
    found.iter().map(ToString::to_string).collect()
}

/// The checker itself: a pod breaking every control is caught on each one, naming the
/// field, so a passing pod elsewhere means something.
#[test]
fn the_checker_names_every_field_that_breaks_restricted() {
    let bad = template(json!({
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined",
                                     "container.apparmor.security.beta.kubernetes.io/ok": "runtime/default"}},
        "spec": {
        "hostNetwork": true, "hostPID": true, "hostIPC": true,
        "securityContext": {"runAsNonRoot": false, "runAsUser": 0, "seccompProfile": {"type": "Unconfined"},
                            "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"},
                                        {"name": "kernel.msgmax", "value": "1"}],
                            "seLinuxOptions": {"type": "spc_t"},
                            "appArmorProfile": {"type": "Unconfined"},
                            "windowsOptions": {"hostProcess": true}},
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}, {"name": "ok", "emptyDir": {}},
                    {"name": "share", "nfs": {"server": "nfs", "path": "/x"}}],
        "initContainers": [{"name": "init"}],
        "containers": [
            {"name": "fine", "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                                 "capabilities": {"drop": ["ALL"]},
                                                 "seccompProfile": {"type": "RuntimeDefault"}}},
            {"name": "c", "ports": [{"containerPort": 80}, {"containerPort": 81, "hostPort": 81}],
             "livenessProbe": {"httpGet": {"port": 80, "host": "10.0.0.1"}},
             "lifecycle": {"preStop": {"tcpSocket": {"port": 80, "host": "node"}}},
             "securityContext": {"privileged": true, "allowPrivilegeEscalation": true,
                                 "runAsNonRoot": false, "runAsUser": 0, "procMount": "Unmasked",
                                 "capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN", "CHOWN"], "drop": ["NET_RAW"]},
                                 "seLinuxOptions": {"user": "system_u", "role": "r"},
                                 "appArmorProfile": {"type": "Unconfined"},
                                 "seccompProfile": {"type": "Unconfined"}}}]},
    }));
    let found = paths(&violations(Level::Restricted, &bad));
    let c = "spec.containers[1].securityContext";
    let expected = [
        "metadata.annotations[container.apparmor.security.beta.kubernetes.io/c]: unconfined".to_string(),
        "spec.hostNetwork: true".into(),
        "spec.hostPID: true".into(),
        "spec.hostIPC: true".into(),
        "spec.securityContext.windowsOptions.hostProcess: true".into(),
        "spec.securityContext.seLinuxOptions.type: spc_t".into(),
        "spec.securityContext.appArmorProfile.type: Unconfined".into(),
        "spec.securityContext.seccompProfile.type: Unconfined".into(),
        "spec.securityContext.sysctls[1].name: kernel.msgmax".into(),
        "spec.securityContext.runAsNonRoot: false".into(),
        "spec.securityContext.runAsUser: 0".into(),
        "spec.volumes[0].hostPath.path: /".into(),
        r#"spec.volumes[2].nfs: volume "share""#.into(),
        // An init container with nothing set: the pod covers neither seccomp (it is
        // Unconfined, reported above) nor the user (root, reported above).
        "spec.initContainers[0].securityContext.allowPrivilegeEscalation: unset (must be false)".into(),
        "spec.initContainers[0].securityContext.capabilities.drop: [] (must include ALL)".into(),
        format!("{c}.privileged: true"),
        "spec.containers[1].ports[1].hostPort: 81".into(),
        format!("{c}.seLinuxOptions.user: system_u"),
        format!("{c}.seLinuxOptions.role: r"),
        format!("{c}.appArmorProfile.type: Unconfined"),
        format!("{c}.procMount: Unmasked"),
        format!("{c}.seccompProfile.type: Unconfined"),
        "spec.containers[1].livenessProbe.httpGet.host: 10.0.0.1".into(),
        "spec.containers[1].lifecycle.preStop.tcpSocket.host: node".into(),
        format!("{c}.capabilities.add[1]: SYS_ADMIN"),
        format!("{c}.capabilities.add[2]: CHOWN"),
        format!("{c}.allowPrivilegeEscalation: true"),
        format!("{c}.capabilities.drop: [NET_RAW] (must include ALL)"),
        format!("{c}.runAsUser: 0"),
        format!("{c}.runAsNonRoot: false"),
    ];
    assert_eq!(found, expected);

    // Baseline: root and the hardening are allowed; every escalation is still named.
    let baseline = paths(&violations(Level::Baseline, &bad));
    for allowed in ["runAsNonRoot", "runAsUser", "allowPrivilegeEscalation", "drop", "nfs", "CHOWN"] {
        assert!(!baseline.iter().any(|v| v.contains(allowed)), "{allowed} in {baseline:#?}");
    }
    assert_eq!(baseline.len(), expected.len() - 10, "{baseline:#?}");
    assert!(baseline.contains(&format!("{c}.capabilities.add[1]: SYS_ADMIN")));
    assert_eq!(violations(Level::Privileged, &bad), []);

    // The same checks pass at the container level alone (nothing on the pod).
    let per_container = pod(json!({"containers": [{"name": "c", "securityContext": {
        "allowPrivilegeEscalation": false, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}]}));
    assert_eq!(restricted_violations(&per_container), Vec::<String>::new());
    // A Windows pod is exempt from the Linux-only controls.
    let windows = pod(json!({"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": true},
                             "containers": [{"name": "c"}]}));
    assert_eq!(restricted_violations(&windows), Vec::<String>::new());
}

#[test]
fn a_refusal_names_each_field_from_the_resource_and_the_level_and_namespace() {
    let one = [Violation { path: "spec.hostPID".into(), value: "true".into() }];
    assert_eq!(
        refusal(&one, "spec.trainer.template.", Level::Restricted, "team-a").as_deref(),
        Some(
            "spec.trainer.template.spec.hostPID: true is not allowed by the restricted pod policy of namespace team-a"
        )
    );
    let many: Vec<Violation> = (0..14)
        .map(|i| Violation { path: format!("spec.volumes[{i}].hostPath.path"), value: "/".into() })
        .collect();
    let msg = refusal(&many, "x.", Level::Baseline, "ns").unwrap();
    assert!(msg.starts_with("x.spec.volumes[0].hostPath.path: /; x.spec.volumes[1]"), "{msg}");
    assert!(msg.ends_with("; 2 more are not allowed by the baseline pod policy of namespace ns"), "{msg}");
    assert_eq!(refusal(&[], "x.", Level::Restricted, "ns"), None);
}

#[test]
fn levels_come_from_the_namespace_or_the_default() {
    let policy = PodPolicy {
        default: Level::Restricted,
        namespaces: [parse_namespace_level("research=baseline").unwrap()].into_iter().collect(),
    };
    assert_eq!((policy.level("research"), policy.level("other")), (Level::Baseline, Level::Restricted));
    assert_eq!(parse_namespace_level("a=privileged"), Ok(("a".into(), Level::Privileged)));
    for bad in ["research", "=baseline", "a=root"] {
        assert!(parse_namespace_level(bad).is_err(), "{bad}");
    }
}

#[test]
fn an_empty_pod_becomes_restricted_with_writable_scratch_for_its_own_containers() {
    let mut p = pod(json!({"initContainers": [{"name": "fetch"}],
                           "containers": [{"name": "main"}, {"name": "sidecar"}]}));
    assert!(!restricted_violations(&p).is_empty());
    secure_pod(&mut p, NONROOT, &["main"]);
    assert_eq!(restricted_violations(&p), Vec::<String>::new());

    let sc = p.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_non_root, sc.run_as_user, sc.run_as_group, sc.fs_group),
        (Some(true), Some(65532), Some(65532), Some(65532))
    );
    assert_eq!(sc.seccomp_profile, Some(runtime_default_seccomp()));
    let main = container(&p, "main");
    assert_eq!(main.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    assert_eq!(mount_paths(main), [TMP_DIR, HOME_DIR]);
    assert_eq!(home(main), Some(HOME_DIR));
    let volumes: Vec<(&str, bool)> =
        p.volumes.iter().flatten().map(|v| (v.name.as_str(), v.empty_dir.is_some())).collect();
    assert_eq!(volumes, [(TMP_VOLUME, true), (HOME_VOLUME, true)]);
    // A user's sidecar and init container are restricted but otherwise left as they are.
    for name in ["fetch", "sidecar"] {
        let c = container(&p, name);
        assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, None, "{name}");
        assert_eq!((c.volume_mounts.as_ref(), c.env.as_ref()), (None, None), "{name}");
    }
}

#[test]
fn what_the_pod_sets_is_kept_field_by_field() {
    let mut p = pod(json!({
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        "containers": [{"name": "main",
                        "env": [{"name": "HOME", "value": "/work"}],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp/"}],
                        "securityContext": {"readOnlyRootFilesystem": false,
                                            "capabilities": {"add": ["NET_BIND_SERVICE"]}}}],
    }));
    secure_pod(&mut p, NONROOT, &["main"]);
    let sc = p.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.fs_group), (Some(1000), Some(2000)), "the user's identity");
    assert_eq!((sc.run_as_group, sc.run_as_non_root), (Some(65532), Some(true)), "the rest defaulted");
    let main = container(&p, "main");
    let csc = main.security_context.as_ref().unwrap();
    assert_eq!(csc.read_only_root_filesystem, Some(false));
    let caps = csc.capabilities.as_ref().unwrap();
    assert_eq!(
        (caps.add.as_deref(), caps.drop.as_deref()),
        (Some(&["NET_BIND_SERVICE".to_string()][..]), Some(&["ALL".to_string()][..]))
    );
    // Its own /tmp (a second mount at one path is a kubelet error) and its own HOME.
    assert_eq!(mount_paths(main), ["/tmp/"]);
    assert_eq!(home(main), Some("/work"));
    let names: Vec<&str> = p.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["scratch"], "no unused emptyDir");
    assert_eq!(restricted_violations(&p), Vec::<String>::new());

    // A value restricted forbids is kept too: the pod policy, not the securing, refuses it.
    let mut root = pod(json!({"securityContext": {"runAsNonRoot": false, "runAsUser": 0},
                              "containers": [{"name": "main", "securityContext": {"privileged": true}}]}));
    secure_pod(&mut root, NONROOT, &["main"]);
    let found = restricted_violations(&root).join("\n");
    assert!(
        found.contains("spec.securityContext.runAsUser: 0")
            && found.contains("spec.containers[0].securityContext.privileged: true"),
        "{found}"
    );
}

fn user_of(c: &Container) -> (Option<bool>, Option<i64>, Option<i64>) {
    let sc = c.security_context.clone().unwrap_or_default();
    (sc.run_as_non_root, sc.run_as_user, sc.run_as_group)
}

/// A root image runs as root when the pod says so, in any of the ways Kubernetes allows:
/// no default contradicts the request (a `runAsNonRoot: true` beside `runAsUser: 0` is a
/// kubelet error), and `runAsNonRoot: false` alone leaves the image's own user.
#[test]
fn a_pod_asking_for_root_gets_no_user_defaults_and_its_other_containers_keep_theirs() {
    for (asked, pod_user) in [
        (json!({"securityContext": {"runAsNonRoot": false}}), (Some(false), None, None)),
        (json!({"securityContext": {"runAsUser": 0}}), (None, Some(0), None)),
        (json!({"securityContext": {"runAsNonRoot": false, "runAsUser": 0}}), (Some(false), Some(0), None)),
    ] {
        let mut p = pod(json!({"containers": [{"name": "main"}]}));
        p.security_context = serde_json::from_value(asked["securityContext"].clone()).unwrap();
        secure_pod(&mut p, NONROOT, &["main"]);
        let sc = p.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.run_as_user, sc.run_as_group), pod_user, "{asked}");
        assert_eq!(user_of(container(&p, "main")), (None, None, None), "{asked}");
        // The rest of the hardening stays.
        assert_eq!(sc.seccomp_profile, Some(runtime_default_seccomp()));
        let csc = container(&p, "main").security_context.clone().unwrap();
        assert_eq!(csc.allow_privilege_escalation, Some(false));
    }

    // One container asking: the pod level stays open, the others default on their own.
    let mut p = pod(json!({"initContainers": [{"name": "fetch"}], "containers": [
        {"name": "main", "securityContext": {"runAsUser": 0}},
        {"name": "sidecar"},
        {"name": "other-user", "securityContext": {"runAsUser": 1000}},
    ]}));
    secure_pod(&mut p, NONROOT, &["main"]);
    let sc = p.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_non_root, sc.run_as_user, sc.run_as_group), (None, None, None));
    assert_eq!(user_of(container(&p, "main")), (None, Some(0), None));
    assert_eq!(user_of(container(&p, "fetch")), (Some(true), Some(65532), Some(65532)));
    assert_eq!(user_of(container(&p, "sidecar")), (Some(true), Some(65532), Some(65532)));
    assert_eq!(user_of(container(&p, "other-user")), (Some(true), Some(1000), Some(65532)));
    assert_eq!(restricted_violations(&p), ["spec.containers[0].securityContext.runAsUser: 0"]);
    let baseline = PodTemplateSpec { metadata: None, spec: Some(p.clone()) };
    assert_eq!(violations(Level::Baseline, &baseline), []);
}

/// The API server refuses `allowPrivilegeEscalation: false` beside `privileged: true` or
/// an added `CAP_SYS_ADMIN`: a level that allows those gets the pod as asked.
#[test]
fn a_privileged_container_gets_no_contradicting_default() {
    let mut p = pod(json!({"containers": [
        {"name": "main"},
        {"name": "priv", "securityContext": {"privileged": true}},
        {"name": "admin", "securityContext": {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}},
    ]}));
    secure_pod(&mut p, NONROOT, &["main"]);
    let escalation =
        |name: &str| container(&p, name).security_context.as_ref().unwrap().allow_privilege_escalation;
    assert_eq!((escalation("main"), escalation("priv"), escalation("admin")), (Some(false), None, None));
}

#[test]
fn no_service_account_token_unless_the_pod_asks_for_one() {
    let mut p = pod(json!({"containers": [{"name": "main"}]}));
    secure_pod(&mut p, NONROOT, &["main"]);
    assert_eq!(p.automount_service_account_token, Some(false));
    let mut asked = pod(json!({"automountServiceAccountToken": true, "containers": [{"name": "main"}]}));
    secure_pod(&mut asked, NONROOT, &["main"]);
    assert_eq!(asked.automount_service_account_token, Some(true));
}

#[test]
fn securing_twice_changes_nothing() {
    let mut once = pod(json!({"containers": [{"name": "main"}]}));
    secure_pod(&mut once, NONROOT, &["main"]);
    let mut twice = once.clone();
    secure_pod(&mut twice, NONROOT, &["main"]);
    assert_eq!(once, twice);
}
