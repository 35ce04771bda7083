//! `mlops-operator uninstall`: the clean path out. Run by the chart's pre-delete hook (or
//! by hand before deleting a plain-manifest install), it stops the operator and lifts the
//! ModelVersions' deletion protection, so that no namespace is left stuck in Terminating
//! on a finalizer nobody will ever remove.
//!
//! The order matters: the operator adds its finalizer to every version it reconciles, so
//! it is scaled to zero and its pods are waited for before any finalizer is removed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use tracing::info;

use crate::api::{FINALIZER_PROTECT_SERVING, ModelVersion};

pub struct Uninstall {
    /// The operator's namespace and Deployment.
    pub namespace: String,
    pub deployment: String,
    /// Label selector of the operator's pods.
    pub selector: String,
    /// Only this namespace's versions (a namespace-scoped install); all when `None`.
    pub watch_namespace: Option<String>,
    /// How long to wait for the operator's pods to stop.
    pub timeout: Duration,
}

/// The finalizers of a version without ours, or `None` when it does not carry ours.
pub fn without_ours(finalizers: &[String]) -> Option<Vec<String>> {
    finalizers
        .iter()
        .any(|f| f == FINALIZER_PROTECT_SERVING)
        .then(|| finalizers.iter().filter(|f| *f != FINALIZER_PROTECT_SERVING).cloned().collect())
}

impl Uninstall {
    pub async fn run(&self, client: Client) -> anyhow::Result<()> {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &self.namespace);
        let scale = serde_json::json!({"spec": {"replicas": 0}});
        match deployments.patch(&self.deployment, &PatchParams::default(), &Patch::Merge(&scale)).await {
            Ok(_) => info!(deployment = %self.deployment, "scaled the operator to zero"),
            Err(kube::Error::Api(s)) if s.code == 404 => info!("the operator Deployment is already gone"),
            Err(e) => return Err(e).context("scaling the operator to zero"),
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = pods.list(&ListParams::default().labels(&self.selector)).await?.items.len();
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{left} operator pod(s) still run after {:?}; finalizers left in place", self.timeout);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let versions: Api<ModelVersion> = match &self.watch_namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let mut released = 0;
        for mv in versions.list(&ListParams::default()).await.context("listing ModelVersions")?.items {
            if without_ours(mv.finalizers()).is_none() {
                continue;
            }
            let ns = mv.namespace().unwrap_or_default();
            let api: Api<ModelVersion> = Api::namespaced(versions.clone().into_client(), &ns);
            // The resourceVersion makes the patch fail rather than drop a finalizer another
            // controller added meanwhile; a version changed since the list is read again.
            let mut current = mv;
            loop {
                let patch = serde_json::json!({"metadata": {
                    "finalizers": without_ours(current.finalizers()).unwrap_or_default(),
                    "resourceVersion": current.resource_version(),
                }});
                match api.patch(&current.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 404 => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        match api.get_opt(&current.name_any()).await? {
                            Some(fresh) if without_ours(fresh.finalizers()).is_some() => current = fresh,
                            _ => break,
                        }
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("releasing ModelVersion {ns}/{}", current.name_any()));
                    }
                }
            }
            released += 1;
        }
        info!(released, "lifted the deletion protection of every ModelVersion");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_finalizer_is_removed() {
        let ours = FINALIZER_PROTECT_SERVING.to_string();
        assert_eq!(
            without_ours(&[ours.clone(), "team.io/keep".into()]),
            Some(vec!["team.io/keep".to_string()])
        );
        assert_eq!(without_ours(std::slice::from_ref(&ours)), Some(vec![]));
        assert_eq!(without_ours(&["team.io/keep".into()]), None, "nothing to do");
    }
}
