//! Which objects a resource may write: only the ones it controls (a controller owner
//! reference with its UID). Every child the operator makes carries one, so a child that
//! exists and lacks it is someone else's object that happens to hold the name: the pass
//! leaves it alone and says so (`Ready=False`, reason `ChildConflict`), instead of
//! server-side applying over it (which would rewrite its spec and add our owner reference,
//! so that the garbage collector deletes it with us).
//!
//! The decision is pure ([`conflicts`]); [`super::apply::Applier::claim`] feeds it what
//! the API server holds at each desired name.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

/// The resource whose children a pass writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Owner {
        Owner { kind: K::kind(&()).into_owned(), name: obj.name_any(), uid: obj.uid().unwrap_or_default() }
    }
}

/// Whether `meta` has a controller owner reference to the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}

/// A desired child's name held by an object the owner does not control.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub kind: String,
    pub name: String,
    /// `Kind/name` of the object's controller, if it has one (with its UID when it has the
    /// owner's kind and name: an earlier object of that name).
    pub controller: Option<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.controller {
            Some(c) => write!(f, "{}/{} (controlled by {c})", self.kind, self.name),
            None => write!(f, "{}/{} (no controller)", self.kind, self.name),
        }
    }
}

/// The desired children, as `(kind, name, what exists at that name)`, whose name is held
/// by an object `owner` does not control. An object in deletion counts as long as it
/// exists: its name is not free yet.
pub fn conflicts<'a>(
    owner: &Owner,
    desired: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a ObjectMeta>)>,
) -> Vec<Conflict> {
    desired
        .into_iter()
        .filter_map(|(kind, name, existing)| {
            let meta = existing?;
            if controlled_by(meta, &owner.uid) {
                return None;
            }
            let controller =
                meta.owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| {
                    // An object of the owner's own name (deleted and re-created) is another one.
                    if r.kind == owner.kind && r.name == owner.name {
                        format!("another {}/{}, uid {}", r.kind, r.name, r.uid)
                    } else {
                        format!("{}/{}", r.kind, r.name)
                    }
                });
            Some(Conflict { kind: kind.into(), name: name.into(), controller })
        })
        .collect()
}

/// The condition message and Event note for `conflicts` of `owner`.
pub fn describe(owner_kind: &str, conflicts: &[Conflict]) -> String {
    let list = conflicts.iter().map(Conflict::to_string).collect::<Vec<_>>().join(", ");
    format!(
        "children's names are taken by objects this {owner_kind} does not control: {list}; \
         they are left untouched. Delete or rename them, or give this {owner_kind} another name"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(value: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(value).unwrap()
    }

    fn owner() -> Owner {
        Owner { kind: "InferenceService".into(), name: "frontend".into(), uid: "mine".into() }
    }

    fn controlled(kind: &str, name: &str, uid: &str) -> ObjectMeta {
        meta(json!({"name": "x", "ownerReferences": [
            {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": true}]}))
    }

    #[test]
    fn only_an_object_under_our_controller_reference_is_ours() {
        let refs = meta(json!({"name": "x", "ownerReferences": [
            {"apiVersion": "v1", "kind": "A", "name": "a", "uid": "other", "controller": true},
            {"apiVersion": "v1", "kind": "B", "name": "b", "uid": "mine", "controller": false}]}));
        assert!(!controlled_by(&refs, "mine"), "an owner reference that is not the controller");
        assert!(controlled_by(&refs, "other"));
        assert!(!controlled_by(&meta(json!({"name": "x"})), ""), "an empty uid matches nothing");
    }

    #[test]
    fn free_names_and_our_own_children_are_no_conflict_anything_else_is() {
        let ours = controlled("InferenceService", "frontend", "mine");
        let users = meta(json!({"name": "frontend", "labels": {"mlops.dev/inference-service": "frontend"}}));
        let previous = controlled("InferenceService", "frontend", "an-earlier-one");
        let foreign = controlled("Deployment", "shop", "d-uid");
        let found = conflicts(
            &owner(),
            [
                ("Deployment", "frontend-iris-v1-0a1b2c3d", None),
                ("Deployment", "frontend-iris-v0-4e5f6a7b", Some(&ours)),
                // Our labels do not make an object ours.
                ("Service", "frontend", Some(&users)),
                ("HTTPRoute", "frontend", Some(&previous)),
                ("HorizontalPodAutoscaler", "frontend", Some(&foreign)),
            ],
        );
        let shown: Vec<String> = found.iter().map(Conflict::to_string).collect();
        assert_eq!(
            shown,
            [
                "Service/frontend (no controller)",
                "HTTPRoute/frontend (controlled by another InferenceService/frontend, uid an-earlier-one)",
                "HorizontalPodAutoscaler/frontend (controlled by Deployment/shop)",
            ]
        );
        let message = describe("InferenceService", &found);
        assert!(message.contains("Service/frontend (no controller), HTTPRoute/frontend"), "{message}");
        assert!(message.contains("left untouched"), "{message}");
    }
}
