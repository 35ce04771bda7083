//! The one applier every controller uses, and how a failed pass becomes visible.
//!
//! A kind's pure `plan` says which children should exist; [`Applier::apply_all`] first
//! makes sure every name is free or already the owner's ([`Applier::claim`]), then
//! server-side applies each one, and [`Applier::prune`] deletes every child of the listed
//! kinds that carries the owner's labels and the owner's controller reference but is no
//! longer desired. An object without our controller reference is never written to or
//! deleted, even when its labels or its name match: it is not ours (see [`ownership`]).
//!
//! Errors name the step and the object ("apply Service iris-stable: …"), and
//! [`Failure::of`] turns one into the condition and Warning Event a user sees.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use serde::Serialize;

use super::{
    Error, Result,
    ownership::{self, Owner, controlled_by},
};
use crate::api::{
    FIELD_MANAGER,
    conditions::{self as cond, Condition},
};

/// One desired child: the object and the resource it is served as.
#[derive(Clone, Debug)]
pub struct Child {
    pub resource: ApiResource,
    pub object: DynamicObject,
}

impl Child {
    /// A typed object (with `metadata.name` set) as a child.
    pub fn of<K>(obj: &K) -> Result<Child>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        Child::dynamic(resource, serde_json::to_value(obj)?)
    }

    /// An untyped object (for kinds this crate has no type for, such as HTTPRoute).
    pub fn dynamic(resource: ApiResource, mut value: serde_json::Value) -> Result<Child> {
        value["apiVersion"] = resource.api_version.clone().into();
        value["kind"] = resource.kind.clone().into();
        Ok(Child { object: serde_json::from_value(value)?, resource })
    }

    pub fn name(&self) -> String {
        self.object.name_any()
    }

    /// `(kind, name)`: what [`Applier::prune`] keeps.
    pub fn key(&self) -> (String, String) {
        (self.resource.kind.clone(), self.name())
    }
}

/// Annotation holding a digest of what the operator last applied to a child: a child
/// whose digest matches and that nobody else has written since is not applied again, so a
/// pass with nothing to change makes no writes.
pub const ANNOTATION_APPLIED: &str = "mlops.dev/applied-digest";

/// Applies and prunes the children of one owner, in the owner's namespace.
pub struct Applier {
    client: Client,
    namespace: String,
    owner: Owner,
    /// The label selector every child of this owner carries.
    selector: String,
    /// What [`Applier::observe`] listed, by kind; `None` for a kind the API server does not
    /// serve (for example HTTPRoute without the Gateway API installed).
    observed: Mutex<BTreeMap<String, Option<Vec<ObjectMeta>>>>,
    /// What [`Applier::claim`] read by name at a desired child's name that the lists did
    /// not show (an object without our labels), by `(kind, name)`; `None`: the name is free.
    named: Mutex<BTreeMap<(String, String), Option<ObjectMeta>>>,
}

impl Applier {
    pub fn new(client: Client, namespace: &str, owner: Owner, selector: &str) -> Applier {
        Applier {
            client,
            namespace: namespace.into(),
            owner,
            selector: selector.into(),
            observed: Mutex::default(),
            named: Mutex::default(),
        }
    }

    /// What the pass knows to exist at `kind`/`name`: from the lists, else read by name.
    fn existing(&self, kind: &str, name: &str) -> Option<ObjectMeta> {
        let listed = self.observed.lock().expect("observed lock").get(kind).cloned().flatten();
        listed.and_then(|list| list.into_iter().find(|m| m.name.as_deref() == Some(name))).or_else(|| {
            self.named
                .lock()
                .expect("named lock")
                .get(&(kind.to_string(), name.to_string()))
                .cloned()
                .flatten()
        })
    }

    fn api(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, resource)
    }

    /// Records the owner's children of kind `K` that the pass already read in full (with
    /// this applier's selector), so [`Applier::observe`] does not list that kind again.
    pub fn observed<'a, K>(&self, children: impl IntoIterator<Item = &'a K>)
    where
        K: Resource<DynamicType = ()> + 'a,
    {
        let metas = children.into_iter().map(|c| c.meta().clone()).collect();
        self.observed.lock().expect("observed lock").insert(K::kind(&()).into_owned(), Some(metas));
    }

    /// Lists (metadata only) the owner's children of `kinds` not yet observed, once per
    /// pass: [`Applier::apply`] skips what is already as desired and [`Applier::prune`]
    /// deletes from this list.
    pub async fn observe(&self, kinds: &[ApiResource]) -> Result<()> {
        let known: BTreeSet<String> = self.observed.lock().expect("observed lock").keys().cloned().collect();
        for resource in kinds.iter().filter(|r| !known.contains(&r.kind)) {
            let listed =
                match self.api(resource).list_metadata(&ListParams::default().labels(&self.selector)).await {
                    Ok(list) => Some(list.items.into_iter().map(|o| o.metadata).collect()),
                    // The kind is not served: nothing of it exists, nothing to prune.
                    Err(kube::Error::Api(s)) if s.code == 404 => None,
                    Err(e) => return Err(Error::child("list", &resource.plural, &self.selector, e)),
                };
            self.observed.lock().expect("observed lock").insert(resource.kind.clone(), listed);
        }
        Ok(())
    }

    /// Makes sure every name in `children` is free or held by a child of this owner: a
    /// name the lists did not show is read (an object someone else made carries none of our
    /// labels), and any name held by an object the owner does not control fails the pass
    /// with [`Error::ChildConflict`], naming them all, before anything is written.
    pub async fn claim(&self, children: &[Child]) -> Result<()> {
        for child in children {
            let (kind, name) = child.key();
            let listed = self.observed.lock().expect("observed lock").get(&kind).cloned().flatten();
            let in_list = listed.is_some_and(|l| l.iter().any(|m| m.name.as_deref() == Some(name.as_str())));
            if in_list || self.named.lock().expect("named lock").contains_key(&(kind.clone(), name.clone())) {
                continue;
            }
            let found = match self.api(&child.resource).get_metadata_opt(&name).await {
                Ok(found) => found.map(|o| o.metadata),
                // The kind is not served: nothing holds the name (the apply will say why).
                Err(kube::Error::Api(s)) if s.code == 404 => None,
                Err(e) => return Err(Error::child("get", &kind, &name, e)),
            };
            self.named.lock().expect("named lock").insert((kind, name), found);
        }
        let existing: Vec<(String, String, Option<ObjectMeta>)> = children
            .iter()
            .map(|c| {
                let (kind, name) = c.key();
                let meta = self.existing(&kind, &name);
                (kind, name, meta)
            })
            .collect();
        let conflicts = ownership::conflicts(
            &self.owner,
            existing.iter().map(|(k, n, m)| (k.as_str(), n.as_str(), m.as_ref())),
        );
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(Error::ChildConflict { owner_kind: self.owner.kind.clone(), conflicts })
        }
    }

    /// Server-side applies `child` with the operator's field manager, taking the fields it
    /// sends, unless the observed child already carries them ([`up_to_date`]). Returns
    /// whether it wrote. Only after [`Applier::claim`]: the write is bound to what the
    /// claim saw at the name (our object, or no object), so an object someone put there
    /// since fails the write instead of being taken.
    pub async fn apply(&self, child: &Child) -> Result<bool> {
        let name = child.name();
        let (mut object, digest) = with_digest(child)?;
        let current = self.existing(&child.resource.kind, &name);
        if let Some(meta) = &current
            && !controlled_by(meta, &self.owner.uid)
        {
            let conflicts = ownership::conflicts(
                &self.owner,
                [(child.resource.kind.as_str(), name.as_str(), Some(meta))],
            );
            return Err(Error::ChildConflict { owner_kind: self.owner.kind.clone(), conflicts });
        }
        if current.as_ref().is_some_and(|m| up_to_date(m, &digest)) {
            return Ok(false);
        }
        // Bound to what the claim saw. An object of ours is named by its UID: if it was
        // replaced since, the API server refuses to change the UID. A free name is applied
        // with a resourceVersion no object has: the API server ignores it when it creates,
        // and answers 409 Conflict if an object took the name meanwhile.
        match current.and_then(|m| m.uid) {
            Some(uid) => object.metadata.uid = Some(uid),
            None => object.metadata.resource_version = Some(NO_OBJECT_RESOURCE_VERSION.into()),
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api(&child.resource)
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| Error::child("apply", &child.resource.kind, &name, e))?;
        Ok(true)
    }

    /// Claims every child's name ([`Applier::claim`]), then applies them in order.
    pub async fn apply_all(&self, children: &[Child]) -> Result<()> {
        self.claim(children).await?;
        for child in children {
            self.apply(child).await?;
        }
        Ok(())
    }

    /// Deletes every object of `kinds` that this owner controls and that `keep` (by kind
    /// and name) does not name, from what [`Applier::observe`] listed (kinds not observed
    /// are listed now). Returns what was deleted, as `(kind, name)`.
    pub async fn prune(
        &self,
        kinds: &[ApiResource],
        keep: &BTreeSet<(String, String)>,
    ) -> Result<Vec<(String, String)>> {
        self.observe(kinds).await?;
        let mut pruned = Vec::new();
        for resource in kinds {
            let listed = self.observed.lock().expect("observed lock").get(&resource.kind).cloned().flatten();
            let api = self.api(resource);
            for meta in listed.unwrap_or_default() {
                let name = meta.name.clone().unwrap_or_default();
                let ours = controlled_by(&meta, &self.owner.uid);
                let wanted = keep.contains(&(resource.kind.clone(), name.clone()));
                if !ours || wanted || meta.deletion_timestamp.is_some() {
                    continue;
                }
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(Error::child("delete", &resource.kind, &name, e)),
                }
                pruned.push((resource.kind.clone(), name));
            }
        }
        Ok(pruned)
    }
}

/// The child as it is applied, carrying [`ANNOTATION_APPLIED`], and that digest.
fn with_digest(child: &Child) -> Result<(DynamicObject, String)> {
    use sha2::Digest;
    let mut object = child.object.clone();
    if let Some(a) = object.metadata.annotations.as_mut() {
        a.remove(ANNOTATION_APPLIED);
    }
    let digest = hex::encode(&sha2::Sha256::digest(serde_json::to_vec(&object)?)[..12]);
    object
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_APPLIED.into(), digest.clone());
    Ok((object, digest))
}

/// Whether an observed child already holds what we would apply: our digest is on it and no
/// other manager owns a field of its body. A `kubectl edit` of a field we set moves that
/// field to the editor's manager entry: that is drift, and the next apply (forced) takes it
/// back. Other controllers' metadata (the Deployment controller's revision annotation) and
/// writes to subresources (status, an autoscaler's scale) are not drift. Timestamps are not
/// compared: a no-op apply does not refresh ours, so a later benign write would look like
/// drift for ever.
pub fn up_to_date(meta: &ObjectMeta, digest: &str) -> bool {
    let ours = meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_APPLIED));
    if ours.map(String::as_str) != Some(digest) {
        return false;
    }
    !meta.managed_fields.iter().flatten().any(|f| {
        let main = f.subresource.as_deref().unwrap_or_default().is_empty();
        let foreign = f.manager.as_deref() != Some(FIELD_MANAGER);
        main && foreign && owns_body_fields(f)
    })
}

/// Whether a managed-fields entry owns anything but `metadata`.
fn owns_body_fields(entry: &ManagedFieldsEntry) -> bool {
    let Some(fields) = entry.fields_v1.as_ref().and_then(|f| f.0.as_object()) else { return false };
    fields.keys().any(|k| k != "f:metadata" && k != ".")
}

/// A resourceVersion no object has: the last revision a store could count to.
const NO_OBJECT_RESOURCE_VERSION: &str = "18446744073709551615";

/// The keep set for [`Applier::prune`] from the children just applied.
pub fn keys<'a>(children: impl IntoIterator<Item = &'a Child>) -> BTreeSet<(String, String)> {
    children.into_iter().map(Child::key).collect()
}

/// A failed pass as the user sees it: a condition reason, the message, and whether it
/// needs a human (`Stalled=True`) or may pass by itself (`Ready=False`, retried).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub stalled: bool,
}

/// The API server refused a child (invalid object): the spec must change.
pub const REASON_CHILD_REJECTED: &str = "ChildRejected";
/// The operator may not do what the pass needs (RBAC, admission policy).
pub const REASON_FORBIDDEN: &str = "Forbidden";
/// Anything else (API server unreachable, timeouts): retried with backoff.
pub const REASON_RECONCILE_FAILED: &str = "ReconcileFailed";
/// A child's name is held by an object the owner does not control (see [`ownership`]).
pub const REASON_CHILD_CONFLICT: &str = "ChildConflict";

impl Failure {
    /// What `err` means for the user; `None` for an optimistic-concurrency conflict, which
    /// the next pass resolves by itself and is not worth a condition or an Event.
    pub fn of(err: &Error) -> Option<Failure> {
        // Only a human can free the name; the pass is retried with backoff (the object that
        // holds it is not watched), so its removal is noticed within the backoff's bound.
        if let Error::ChildConflict { .. } = err {
            return Some(Failure { reason: REASON_CHILD_CONFLICT, message: err.to_string(), stalled: true });
        }
        let status = match err {
            Error::Kube(kube::Error::Api(s)) => Some(s),
            Error::Child { source, .. } => match &**source {
                kube::Error::Api(s) => Some(s),
                _ => None,
            },
            _ => None,
        };
        let (reason, stalled) = match status {
            Some(s) if s.code == 409 => return None,
            // Our child was replaced by another object since the pass read it (the apply is
            // bound to its UID): the next pass reads the newcomer and reports the conflict.
            Some(s)
                if s.code == 422 && s.message.contains("metadata.uid") && s.message.contains("immutable") =>
            {
                return None;
            }
            Some(s) if s.code == 422 || s.code == 400 => (REASON_CHILD_REJECTED, true),
            // A server-side apply whose object cannot be converted to its typed form (a
            // quantity such as `cpu: half`) is answered 500, though it is the object that
            // is wrong and retrying cannot help.
            Some(s) if s.code == 500 && s.message.contains("failed to convert new object") => {
                (REASON_CHILD_REJECTED, true)
            }
            Some(s) if s.code == 403 => (REASON_FORBIDDEN, true),
            _ => (REASON_RECONCILE_FAILED, false),
        };
        Some(Failure { reason, message: err.to_string(), stalled })
    }

    /// Writes this failure into `conditions`: `Ready=False` with the reason and message,
    /// and `Stalled=True` when a human must act, else `Reconciling=True` (it is retried).
    /// Returns whether anything changed, so an unchanged failure writes nothing.
    pub fn apply_to(&self, conditions: &mut Vec<Condition>, generation: Option<i64>, now: &Time) -> bool {
        let mut set = |type_: &str, status: &str| {
            let c = cond::new_condition(type_, status, self.reason, &self.message, generation, now.clone());
            cond::set_condition(conditions, c, now.clone())
        };
        let ready = set(cond::READY, cond::STATUS_FALSE);
        let other = if self.stalled {
            set(cond::STALLED, cond::STATUS_TRUE)
        } else {
            set(cond::RECONCILING, cond::STATUS_TRUE)
        };
        ready || other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, "Invalid").with_code(code).boxed())
    }

    fn owner() -> Owner {
        Owner { kind: "InferenceService".into(), name: "iris".into(), uid: "mine".into() }
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_refused_child_stalls_and_names_the_step_and_object() {
        let err =
            Error::child("apply", "Service", "iris-stable", api_error(422, "metadata.name: Invalid value"));
        let f = Failure::of(&err).unwrap();
        assert_eq!(f.reason, REASON_CHILD_REJECTED);
        assert!(f.stalled);
        assert_eq!(f.message, "apply Service iris-stable: metadata.name: Invalid value");
    }

    #[test]
    fn an_object_the_api_server_cannot_convert_is_rejected_not_retried() {
        let why = "failed to convert new object (ns/iris-r1; apps/v1, Kind=Deployment) to smd typed: \
                   .spec.template.spec.containers[name=\"server\"].resources.requests.cpu: quantities must match";
        let err = Error::child("apply", "Deployment", "iris-r1", api_error(500, why));
        let f = Failure::of(&err).unwrap();
        assert_eq!((f.reason, f.stalled), (REASON_CHILD_REJECTED, true));
    }

    #[test]
    fn conflicts_are_not_failures_and_transport_errors_are_retried() {
        assert_eq!(Failure::of(&Error::Kube(api_error(409, "conflict"))), None);
        let replaced = "Service \"iris\" is invalid: metadata.uid: Invalid value: \"u\": field is immutable";
        assert_eq!(Failure::of(&Error::child("apply", "Service", "iris", api_error(422, replaced))), None);
        let f = Failure::of(&Error::Kube(api_error(500, "etcd timeout"))).unwrap();
        assert_eq!((f.reason, f.stalled), (REASON_RECONCILE_FAILED, false));
        let f = Failure::of(&Error::Kube(api_error(403, "forbidden"))).unwrap();
        assert_eq!((f.reason, f.stalled), (REASON_FORBIDDEN, true));
    }

    #[test]
    fn a_failure_sets_ready_false_and_stalled_once() {
        let f = Failure { reason: REASON_CHILD_REJECTED, message: "apply X y: bad".into(), stalled: true };
        let mut conds = Vec::new();
        assert!(f.apply_to(&mut conds, Some(2), &t(10)));
        assert!(cond::is_false(&conds, cond::READY));
        assert!(cond::is_true(&conds, cond::STALLED));
        assert_eq!(cond::find(&conds, cond::READY).unwrap().message, "apply X y: bad");
        // The same failure again changes nothing: no write, no hot loop.
        assert!(!f.apply_to(&mut conds, Some(2), &t(20)));
    }

    #[test]
    fn children_carry_their_type() {
        let svc: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "iris"}})).unwrap();
        let child = Child::of(&svc).unwrap();
        assert_eq!(child.key(), ("Service".to_string(), "iris".to_string()));
        assert_eq!(child.object.types.as_ref().unwrap().api_version, "v1");
    }

    #[tokio::test]
    async fn prune_deletes_only_undesired_children_under_our_controller_reference() {
        use crate::controllers::mock_api::{self, Call};
        let owned = |name: &str, uid: &str| {
            serde_json::json!({"metadata": {"name": name, "ownerReferences": [
                {"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "name": "iris", "uid": uid, "controller": true}
            ]}})
        };
        let (client, log) = mock_api::client(move |call: &Call| match call.method.as_str() {
            "GET" => mock_api::list(
                "Service",
                vec![owned("iris", "mine"), owned("iris-stable", "mine"), owned("theirs", "other")],
            ),
            "DELETE" => (200, serde_json::json!({"kind": "Status", "status": "Success"})),
            _ => mock_api::status(405, "MethodNotAllowed", "unexpected"),
        });
        let applier = Applier::new(client, "ns", owner(), "mlops.dev/inference-service=iris");
        let keep = BTreeSet::from([("Service".to_string(), "iris".to_string())]);
        let services = ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
        let pruned = applier.prune(&[services], &keep).await.unwrap();
        assert_eq!(pruned, vec![("Service".to_string(), "iris-stable".to_string())]);
        assert_eq!(
            mock_api::lines(&log),
            vec!["GET /api/v1/namespaces/ns/services", "DELETE /api/v1/namespaces/ns/services/iris-stable",]
        );
    }

    fn observed(digest: &str, managers: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(serde_json::json!({
            "name": "iris",
            "annotations": {ANNOTATION_APPLIED: digest},
            "managedFields": managers,
        }))
        .unwrap()
    }

    #[test]
    fn a_child_is_up_to_date_only_with_our_digest_and_no_foreign_body_fields() {
        let ours = serde_json::json!({"manager": FIELD_MANAGER, "operation": "Apply",
            "fieldsV1": {"f:metadata": {}, "f:spec": {"f:replicas": {}}}});
        let revision = serde_json::json!({"manager": "kube-controller-manager", "operation": "Update",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}}});
        let status = serde_json::json!({"manager": "kube-controller-manager", "operation": "Update",
            "subresource": "status", "fieldsV1": {"f:status": {}}});
        let scale = serde_json::json!({"manager": "kube-controller-manager", "operation": "Update",
            "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}});
        let edit = serde_json::json!({"manager": "kubectl-edit", "operation": "Update",
            "fieldsV1": {"f:spec": {"f:template": {}}}});
        assert!(up_to_date(&observed("d1", serde_json::json!([ours, revision, status, scale])), "d1"));
        assert!(!up_to_date(&observed("d1", serde_json::json!([ours])), "d2"), "the desired state changed");
        assert!(
            !up_to_date(&observed("d1", serde_json::json!([ours, edit])), "d1"),
            "someone edited the body"
        );
    }

    #[tokio::test]
    async fn an_observed_child_that_is_up_to_date_is_not_applied_again() {
        use crate::controllers::mock_api::{self, Call};
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "iris"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap();
        let child = Child::of(&svc).unwrap();
        let (_, digest) = with_digest(&child).unwrap();
        let stored = serde_json::json!({"metadata": {"name": "iris", "uid": "svc-uid",
            "annotations": {ANNOTATION_APPLIED: digest}, "ownerReferences": [
            {"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "name": "iris", "uid": "mine", "controller": true}]}});
        let (client, log) = mock_api::client(move |call: &Call| match call.method.as_str() {
            "GET" => mock_api::list("Service", vec![stored.clone()]),
            _ => mock_api::echo(call),
        });
        let applier = Applier::new(client, "ns", owner(), "app=iris");
        applier.observe(std::slice::from_ref(&child.resource)).await.unwrap();
        assert!(!applier.apply(&child).await.unwrap(), "unchanged: no write");
        let mut changed = child.clone();
        changed.object.data["spec"]["ports"][0]["port"] = 8080.into();
        assert!(applier.apply(&changed).await.unwrap(), "changed: applied");
        let writes = mock_api::writes(&log);
        assert_eq!(writes.len(), 1);
        let body = writes[0].body.as_ref().unwrap();
        assert!(body["metadata"]["annotations"][ANNOTATION_APPLIED].is_string());
        assert_eq!(body["metadata"]["uid"], "svc-uid", "bound to the object the pass saw");
    }

    fn service(name: &str) -> Child {
        let svc: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Child::of(&svc).unwrap()
    }

    #[tokio::test]
    async fn a_name_held_by_an_object_we_do_not_control_is_a_conflict_and_nothing_is_written() {
        use crate::controllers::mock_api::{self, Call};
        // `theirs` carries our labels (it is listed) under another controller; `frontend`
        // has none of our labels (only a read by name finds it); `free` does not exist.
        let theirs = serde_json::json!({"metadata": {"name": "theirs", "uid": "t", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop", "uid": "d", "controller": true}]}});
        let frontend = serde_json::json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "frontend", "uid": "f"}});
        let (client, log) = mock_api::client(move |call: &Call| match (call.method.as_str(), call.line()) {
            ("GET", l) if l.ends_with("/services") => mock_api::list("Service", vec![theirs.clone()]),
            ("GET", l) if l.ends_with("/services/frontend") => (200, frontend.clone()),
            ("GET", _) => mock_api::not_found(),
            _ => mock_api::echo(call),
        });
        let applier = Applier::new(client, "ns", owner(), "app=iris");
        let children = [service("free"), service("frontend"), service("theirs")];
        applier.observe(std::slice::from_ref(&children[0].resource)).await.unwrap();
        let err = applier.apply_all(&children).await.unwrap_err();
        let Error::ChildConflict { conflicts, .. } = &err else { panic!("{err}") };
        let shown: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["Service/frontend (no controller)", "Service/theirs (controlled by Deployment/shop)"]
        );
        let failure = Failure::of(&err).unwrap();
        assert_eq!((failure.reason, failure.stalled), (REASON_CHILD_CONFLICT, true));
        assert!(mock_api::writes(&log).is_empty(), "nothing applied, not even the free name");
        let services = ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
        assert!(applier.prune(&[services], &BTreeSet::new()).await.unwrap().is_empty(), "nothing pruned");
        assert!(mock_api::writes(&log).is_empty());
    }

    #[tokio::test]
    async fn a_free_name_is_applied_bound_to_a_resource_version_no_object_has() {
        use crate::controllers::mock_api::{self, Call};
        let (client, log) = mock_api::client(move |call: &Call| match call.method.as_str() {
            "GET" if call.line().ends_with("/services") => mock_api::list("Service", vec![]),
            "GET" => mock_api::not_found(),
            _ => mock_api::echo(call),
        });
        let applier = Applier::new(client, "ns", owner(), "app=iris");
        let child = service("iris");
        applier.observe(std::slice::from_ref(&child.resource)).await.unwrap();
        applier.apply_all(std::slice::from_ref(&child)).await.unwrap();
        let lines = mock_api::lines(&log);
        assert_eq!(
            lines,
            [
                "GET /api/v1/namespaces/ns/services",
                "GET /api/v1/namespaces/ns/services/iris",
                "PATCH /api/v1/namespaces/ns/services/iris"
            ]
        );
        let writes = mock_api::writes(&log);
        let meta = &writes[0].body.as_ref().unwrap()["metadata"];
        assert_eq!(meta["resourceVersion"], NO_OBJECT_RESOURCE_VERSION, "created, or refused if taken since");
        assert!(meta.get("uid").is_none(), "{meta}");
    }
}
