//! The permissions the operator needs, as one list. `mlops-operator rbac` prints it as the
//! `rules` of a Role; the Helm chart includes what it prints (`charts/mlops-operator/files/rbac/`)
//! and `hack/verify-generated.sh` fails when the copy differs, so what is granted cannot
//! drift from this list. Each rule says which calls need it: reads are get/list/watch
//! (a controller's watch lists first; get adds nothing list does not show), writes are
//! listed verb by verb.

use crate::api::GROUP;

/// One RBAC policy rule and why the operator needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule<'a> {
    pub api_groups: &'a [&'a str],
    pub resources: &'a [&'a str],
    /// Limits the rule to one object by name (verbs such as `create` cannot be limited).
    pub resource_name: Option<&'a str>,
    pub verbs: &'a [&'a str],
    /// Printed as a comment above the rule.
    pub why: &'a str,
}

const READ: &[&str] = &["get", "list", "watch"];
/// Server-side apply (patch, and create when the object is new), and delete for pruning.
const OWN_CHILDREN: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
const PATCH: &[&str] = &["patch"];
const UPDATE: &[&str] = &["update"];

const fn rule<'a>(
    api_groups: &'a [&'a str],
    resources: &'a [&'a str],
    verbs: &'a [&'a str],
    why: &'a str,
) -> Rule<'a> {
    Rule { api_groups, resources, resource_name: None, verbs, why }
}

/// The rules of the operator's ClusterRole (a Role in the watched namespace when it watches
/// only one).
pub const OPERATOR: &[Rule<'static>] = &[
    // --- The three kinds ---
    rule(
        &[GROUP],
        &["trainingjobs"],
        READ,
        "TrainingJob controller: watches TrainingJobs (and their deletions, for their metrics).",
    ),
    rule(&[GROUP], &["trainingjobs/status"], PATCH, "TrainingJob status (server-side apply)."),
    rule(
        &[GROUP],
        &["trainingjobs/finalizers"],
        UPDATE,
        "Jobs and Services of a run carry a controller owner reference (blockOwnerDeletion) to \
         their TrainingJob; the OwnerReferencesPermissionEnforcement admission plugin (on in \
         OpenShift) requires update on the owner's finalizers for that.",
    ),
    rule(
        &[GROUP],
        &["modelversions"],
        &["get", "list", "watch", "create", "patch", "delete"],
        "ModelVersion controller: watches versions and adds or removes its finalizer (patch); the \
         TrainingJob controller creates a version per successful run and deletes the versions it \
         produced beyond modelVersion.retention; the InferenceService controller reads the \
         versions of its model.",
    ),
    rule(&[GROUP], &["modelversions/status"], PATCH, "ModelVersion status (server-side apply)."),
    rule(
        &[GROUP],
        &["inferenceservices"],
        READ,
        "InferenceService controller: watches InferenceServices; the ModelVersion controller lists \
         which serve a version, the drift trigger reads the one it watches.",
    ),
    rule(&[GROUP], &["inferenceservices/status"], PATCH, "InferenceService status (server-side apply)."),
    rule(
        &[GROUP],
        &["inferenceservices/finalizers"],
        UPDATE,
        "Serving Deployments, Services, HPAs and HTTPRoutes carry a controller owner reference \
         (blockOwnerDeletion) to their InferenceService (see trainingjobs/finalizers).",
    ),
    // --- Children: applied server-side, pruned when no longer desired ---
    rule(
        &["batch"],
        &["jobs"],
        OWN_CHILDREN,
        "One Job per training run, suspended with its TrainingJob; the data trigger's short \
         dataset-check Jobs (deleted once read).",
    ),
    rule(
        &[""],
        &["services"],
        OWN_CHILDREN,
        "The headless Service of a distributed run; an InferenceService's Service and, with \
         Gateway API routing, one per role (deleted when routing no longer needs them).",
    ),
    rule(
        &["apps"],
        &["deployments"],
        OWN_CHILDREN,
        "Serving Deployments, stable and canary (a retired one is deleted).",
    ),
    rule(
        &["autoscaling"],
        &["horizontalpodautoscalers"],
        OWN_CHILDREN,
        "The HorizontalPodAutoscaler of an InferenceService with autoscaling.",
    ),
    rule(
        &["gateway.networking.k8s.io"],
        &["httproutes"],
        OWN_CHILDREN,
        "The HTTPRoute that weights traffic between stable and canary (Gateway API routing).",
    ),
    // --- Pods and Events ---
    rule(
        &[""],
        &["pods"],
        READ,
        "Trainer results are read from the terminated pods' status; canary health from the \
         serving pods.",
    ),
    rule(
        &[""],
        &["pods/status"],
        PATCH,
        "The mlops.dev/scraped readiness gate of serving pods (analysis.waitForFirstScrape).",
    ),
    rule(
        &["events.k8s.io"],
        &["events"],
        &["create", "patch"],
        "kube-runtime's Recorder: creates an Event, patches it when it repeats (series).",
    ),
];

/// The rules of the leader-election Role in the operator's own namespace: read the Lease,
/// create it when absent, update (replace) it to acquire, renew and release. No list or
/// watch, and no other Lease.
pub fn leader_election(lease_name: &str) -> [Rule<'_>; 2] {
    const LEASES: &[&str] = &["leases"];
    const COORDINATION: &[&str] = &["coordination.k8s.io"];
    [
        rule(
            COORDINATION,
            LEASES,
            &["create"],
            "Create the Lease when it is absent (create cannot be limited by name).",
        ),
        Rule {
            resource_name: Some(lease_name),
            ..rule(
                COORDINATION,
                LEASES,
                &["get", "update"],
                "Read the Lease, then acquire, renew and release it.",
            )
        },
    ]
}

/// The uninstall hook's rules where the versions are (cluster-wide, or the watched
/// namespace): it lists ModelVersions and patches its finalizer away.
pub const UNINSTALL: &[Rule<'static>] = &[rule(
    &[GROUP],
    &["modelversions"],
    &["get", "list", "patch"],
    "mlops-operator uninstall: lists the ModelVersions and removes the operator's finalizer \
     (re-reading one that changed meanwhile).",
)];

/// The uninstall hook's rules in the operator's own namespace: scale the operator's
/// Deployment (and no other) to zero, then wait for its pods.
pub fn uninstall_release(deployment: &str) -> [Rule<'_>; 2] {
    [
        Rule {
            resource_name: Some(deployment),
            ..rule(
                &["apps"],
                &["deployments"],
                &["patch"],
                "Scale the operator to zero before its finalizers go.",
            )
        },
        rule(&[""], &["pods"], &["list"], "Wait until no operator pod runs."),
    ]
}

/// `rules` as a YAML list, each rule under a comment saying why, with a generated-file
/// header. The same rules always give the same bytes, so CI can diff it against the chart.
pub fn rules_yaml(rules: &[Rule<'_>]) -> String {
    let mut out =
        String::from("# Generated by `mlops-operator rbac` from src/rbac.rs. Do not edit by hand.\n");
    for r in rules {
        for line in wrap(r.why, 88) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!("- apiGroups: {}\n", flow(r.api_groups)));
        out.push_str(&format!("  resources: {}\n", flow(r.resources)));
        if let Some(name) = r.resource_name {
            out.push_str(&format!("  resourceNames: {}\n", flow(&[name])));
        }
        out.push_str(&format!("  verbs: {}\n", flow(r.verbs)));
    }
    out
}

/// A flow sequence of double-quoted strings (JSON strings are YAML scalars).
fn flow(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| serde_json::Value::from(*s).to_string()).collect();
    format!("[{}]", quoted.join(", "))
}

/// Words of `text` in lines of at most `width` characters (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

#[cfg(test)]
mod tests;
