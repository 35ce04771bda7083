//! A container's environment, resolved the way the kubelet does it (pure: the ConfigMaps
//! and Secrets it refers to are fetched by the caller), plus the headless-Service name
//! rewriting that stands in for cluster DNS.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

/// What the environment may refer to besides the pod itself.
#[derive(Debug, Clone, Default)]
pub struct EnvContext {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// Data of the ConfigMaps and Secrets a container refers to; an absent name means the
/// object does not exist.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    MissingConfigMap(String),
    #[error("secret \"{0}\" not found")]
    MissingSecret(String),
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey { kind: &'static str, namespace: String, name: String, key: String },
    #[error("unsupported fieldRef {0}")]
    UnsupportedField(String),
}

/// Names of the ConfigMaps and Secrets the container's `env` and `envFrom` refer to.
pub fn referenced_sources(c: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(src) = &var.value_from {
            if let Some(r) = &src.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &src.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// The container's variables in order: `envFrom` first, then `env` (later wins), with
/// `$(VAR)` references expanded against the variables defined before them.
pub fn resolve_env(
    pod: &Pod,
    c: &Container,
    ctx: &EnvContext,
    src: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = vars.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, missing) = if let Some(r) = &from.config_map_ref {
            (src.config_maps.get(&r.name), r.optional, EnvError::MissingConfigMap(r.name.clone()))
        } else if let Some(r) = &from.secret_ref {
            (src.secrets.get(&r.name), r.optional, EnvError::MissingSecret(r.name.clone()))
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut vars, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional == Some(true) => {}
            None => return Err(missing),
        }
    }
    for var in c.env.iter().flatten() {
        let value = if let Some(src_ref) = &var.value_from {
            if let Some(f) = &src_ref.field_ref {
                field_value(pod, ctx, &f.field_path)?
            } else if let Some(r) = &src_ref.config_map_key_ref {
                match lookup_key(&src.config_maps, "configmap", &ns, &r.name, &r.key) {
                    Ok(v) => v,
                    Err(_) if r.optional == Some(true) => continue,
                    Err(e) => return Err(e),
                }
            } else if let Some(r) = &src_ref.secret_key_ref {
                match lookup_key(&src.secrets, "secret", &ns, &r.name, &r.key) {
                    Ok(v) => v,
                    Err(_) if r.optional == Some(true) => continue,
                    Err(e) => return Err(e),
                }
            } else if let Some(r) = &src_ref.resource_field_ref {
                resource_value(c, &r.resource)
            } else {
                String::new()
            }
        } else {
            let defined: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(var.value.as_deref().unwrap_or_default(), &defined)
        };
        set(&mut vars, var.name.clone(), value);
    }
    Ok(vars)
}

fn lookup_key(
    objects: &BTreeMap<String, BTreeMap<String, String>>,
    kind: &'static str,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<String, EnvError> {
    let data = objects.get(name).ok_or_else(|| match kind {
        "secret" => EnvError::MissingSecret(name.to_owned()),
        _ => EnvError::MissingConfigMap(name.to_owned()),
    })?;
    data.get(key).cloned().ok_or_else(|| EnvError::MissingKey {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })
}

fn field_value(pod: &Pod, ctx: &EnvContext, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix("['")?.strip_suffix("']")?;
        Some(rest.to_owned())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| ctx.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.clone(),
        _ => {
            if let Some(k) = map_key("metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = map_key("metadata.annotations") {
                meta.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedField(path.to_owned()));
            }
        }
    })
}

fn resource_value(c: &Container, resource: &str) -> String {
    let (section, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let res = c.resources.as_ref();
    let q = match section {
        "requests" => res.and_then(|r| r.requests.as_ref()).and_then(|m| m.get(name)),
        _ => res.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(name)),
    };
    q.map(|q| q.0.clone()).unwrap_or_else(|| "0".into())
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown references are
/// kept verbatim, and `$$` escapes a dollar.
pub fn expand(input: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What a dotted name means when looked up as `<hostname>.<subdomain>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A pod with that hostname and subdomain has this IP.
    Ip(String),
    /// The subdomain is a headless Service but no such pod has an address yet.
    Pending,
    /// Not a pod name behind a headless Service: leave the text alone.
    NotAName,
}

/// Stand-in for cluster DNS (development approximation): every token of the form
/// `<hostname>.<subdomain>[.<namespace>[.svc[.cluster.local]]]` in `value`, where
/// `<subdomain>` is a headless Service of the pod's namespace, is replaced by the IP of
/// the pod with that hostname and subdomain. Returns the name still waiting for a pod
/// as the error.
pub fn rewrite_hostnames(
    value: &str,
    namespace: &str,
    lookup: &dyn Fn(&str, &str) -> Lookup,
) -> Result<String, String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let mut out = String::with_capacity(value.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| -> Result<(), String> {
        if !token.is_empty() {
            match name_parts(token, namespace) {
                Some((host, sub)) => match lookup(host, sub) {
                    Lookup::Ip(ip) => out.push_str(&ip),
                    Lookup::Pending => return Err(token.clone()),
                    Lookup::NotAName => out.push_str(token),
                },
                None => out.push_str(token),
            }
            token.clear();
        }
        Ok(())
    };
    for ch in value.chars() {
        if is_name_char(ch) {
            token.push(ch);
        } else {
            flush(&mut token, &mut out)?;
            out.push(ch);
        }
    }
    flush(&mut token, &mut out)?;
    Ok(out)
}

fn name_parts<'a>(token: &'a str, namespace: &str) -> Option<(&'a str, &'a str)> {
    let token = token.trim_end_matches('.');
    let parts: Vec<&str> = token.split('.').collect();
    let ok = match parts.len() {
        2 => true,
        3 => parts[2] == namespace,
        4 => parts[2] == namespace && parts[3] == "svc",
        6 => parts[2] == namespace && parts[3] == "svc" && parts[4] == "cluster" && parts[5] == "local",
        _ => false,
    };
    let label = |s: &str| {
        !s.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.chars().any(|c| c.is_ascii_lowercase())
    };
    (ok && label(parts[0]) && label(parts[1])).then(|| (parts[0], parts[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
            "spec": {"nodeName": "local-node", "containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    fn container(env: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "env": env})).unwrap()
    }

    fn ctx() -> EnvContext {
        EnvContext { pod_ip: "127.1.0.7".into(), host_ip: "127.0.0.1".into(), node_name: "local-node".into() }
    }

    #[test]
    fn literals_field_refs_and_expansion() {
        let c = container(json!([
            {"name": "A", "value": "x"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(IP):8080/$(A)/$(NOPE)/$$(A)"},
        ]));
        let vars = resolve_env(&pod(), &c, &ctx(), &Sources::default()).unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("NAME"), Some("p"));
        assert_eq!(get("NS"), Some("ns"));
        assert_eq!(get("IP"), Some("127.1.0.7"));
        assert_eq!(get("NODE"), Some("local-node"));
        assert_eq!(get("APP"), Some("a"));
        assert_eq!(get("URL"), Some("http://127.1.0.7:8080/x/$(NOPE)/$(A)"));
    }

    #[test]
    fn config_map_and_secret_refs() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "s"}}},
                {"name": "O", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "s", "optional": true}}},
            ]
        }))
        .unwrap();
        assert_eq!(referenced_sources(&c), (vec!["cm".into()], vec!["gone".into(), "sec".into()]));
        let mut src = Sources::default();
        src.config_maps.insert("cm".into(), [("k".to_string(), "v".to_string())].into());
        let err = resolve_env(&pod(), &c, &ctx(), &src).unwrap_err();
        assert_eq!(err, EnvError::MissingSecret("sec".into()));
        src.secrets.insert("sec".into(), [("s".to_string(), "hush".to_string())].into());
        let vars = resolve_env(&pod(), &c, &ctx(), &src).unwrap();
        assert_eq!(
            vars,
            vec![("CM_k".into(), "v".into()), ("K".into(), "v".into()), ("S".into(), "hush".into())]
        );
        src.secrets.insert("sec".into(), BTreeMap::new());
        assert!(matches!(resolve_env(&pod(), &c, &ctx(), &src), Err(EnvError::MissingKey { .. })));
    }

    #[test]
    fn headless_names_become_pod_ips() {
        let lookup = |host: &str, sub: &str| match (host, sub) {
            ("job-0", "workers") => Lookup::Ip("127.1.0.9".into()),
            ("job-1", "workers") => Lookup::Pending,
            _ => Lookup::NotAName,
        };
        assert_eq!(rewrite_hostnames("job-0.workers", "ns", &lookup).unwrap(), "127.1.0.9");
        assert_eq!(
            rewrite_hostnames("tcp://job-0.workers.ns.svc.cluster.local:29500", "ns", &lookup).unwrap(),
            "tcp://127.1.0.9:29500"
        );
        assert_eq!(rewrite_hostnames("job-0.workers.ns.svc", "ns", &lookup).unwrap(), "127.1.0.9");
        assert_eq!(rewrite_hostnames("job-0.workers.other", "ns", &lookup).unwrap(), "job-0.workers.other");
        assert_eq!(rewrite_hostnames("0.5,file.csv", "ns", &lookup).unwrap(), "0.5,file.csv");
        assert_eq!(rewrite_hostnames("a job-1.workers", "ns", &lookup), Err("job-1.workers".into()));
    }
}
