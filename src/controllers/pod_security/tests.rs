use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

use super::{restricted::restricted_violations, *};

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

/// The checker itself: a pod breaking every control is caught on each one, so a passing
/// pod elsewhere means something.
#[test]
fn the_checker_finds_every_restricted_violation() {
    let bad = pod(json!({
        "hostNetwork": true, "hostPID": true, "hostIPC": true,
        "securityContext": {"runAsUser": 0, "seccompProfile": {"type": "Unconfined"},
                            "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
                            "seLinuxOptions": {"type": "spc_t"},
                            "appArmorProfile": {"type": "Unconfined"},
                            "windowsOptions": {"hostProcess": true}},
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}, {"name": "ok", "emptyDir": {}}],
        "initContainers": [{"name": "init"}],
        "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                        "securityContext": {"privileged": true, "allowPrivilegeEscalation": true,
                                            "runAsNonRoot": false, "runAsUser": 0, "procMount": "Unmasked",
                                            "capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]},
                                            "seLinuxOptions": {"user": "system_u"},
                                            "appArmorProfile": {"type": "Unconfined"},
                                            "seccompProfile": {"type": "Unconfined"}}}],
    }));
    let found = restricted_violations(&bad).join("\n");
    for expected in [
        "pod: hostNetwork",
        "pod: hostPID",
        "pod: hostIPC",
        "pod: securityContext.windowsOptions.hostProcess",
        "pod: sysctl kernel.msgmax",
        "pod: seLinuxOptions.type spc_t",
        "pod: appArmorProfile.type Unconfined",
        "volume host: type not allowed",
        "pod: seccompProfile.type",
        "pod: runAsUser is 0",
        // An init container with nothing set, on a pod that does not cover it.
        "container init: allowPrivilegeEscalation",
        "container init: no seccompProfile",
        "container init: runAsNonRoot is not true",
        "container init: capabilities must drop ALL",
        "container c: privileged",
        "container c: hostPort 80",
        "container c: seLinuxOptions.user or role",
        "container c: appArmorProfile.type Unconfined",
        "container c: procMount Unmasked",
        "container c: allowPrivilegeEscalation",
        "container c: seccompProfile.type",
        "container c: runAsNonRoot is false",
        "container c: runAsUser is 0",
        "container c: capabilities must drop ALL",
        "container c: adds capability SYS_ADMIN",
    ] {
        assert!(found.contains(expected), "missing {expected:?} in\n{found}");
    }
    assert!(!found.contains("NET_BIND_SERVICE"), "the one capability restricted allows: {found}");
    assert!(!found.contains("volume ok"), "{found}");

    // The same checks pass at the container level alone (nothing on the pod).
    let per_container = pod(json!({"containers": [{"name": "c", "securityContext": {
        "allowPrivilegeEscalation": false, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}]}));
    assert_eq!(restricted_violations(&per_container), Vec::<String>::new());
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

    // A value restricted forbids is kept too: admission, not the operator, refuses it.
    let mut root = pod(json!({"securityContext": {"runAsNonRoot": false, "runAsUser": 0},
                              "containers": [{"name": "main", "securityContext": {"privileged": true}}]}));
    secure_pod(&mut root, NONROOT, &["main"]);
    let found = restricted_violations(&root).join("\n");
    assert!(found.contains("pod: runAsUser is 0") && found.contains("container main: privileged"), "{found}");
}

#[test]
fn securing_twice_changes_nothing() {
    let mut once = pod(json!({"containers": [{"name": "main"}]}));
    secure_pod(&mut once, NONROOT, &["main"]);
    let mut twice = once.clone();
    secure_pod(&mut twice, NONROOT, &["main"]);
    assert_eq!(once, twice);
}
