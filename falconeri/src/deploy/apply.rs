//! Sending a rendered manifest to the cluster, and taking a deployment down,
//! through kube's dynamic API. The kinds are an explicit table rather than
//! discovery: the manifest holds eight well-known kinds, and a table needs no
//! extra round trips (nor discovery permissions).

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use serde::Serialize;
use serde_json::Value;

use crate::cluster;

/// The field manager of every object `falconeri deploy` applies.
pub const FIELD_MANAGER: &str = "falconeri";

/// What happened to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Created or updated by server-side apply.
    Applied,
    /// A Secret or the namespace, which already exists: never changed (see
    /// [`apply`]).
    Kept,
    /// Deleted (its dependents are deleted in the background).
    Deleted,
    /// Already gone.
    Absent,
    /// Not deleted, because `falconeri deploy` did not make it.
    NotOurs,
}

impl Action {
    /// The word shown in text output, padded to one width.
    fn word(self) -> &'static str {
        match self {
            Action::Applied => "applied ",
            Action::Kept => "kept    ",
            Action::Deleted => "deleted ",
            Action::Absent => "absent  ",
            Action::NotOurs => "skipped ",
        }
    }
}

/// One object's outcome, printed as it happens and listed by `-o json`.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub kind: String,
    pub name: String,
    pub action: Action,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.action.word(), self.kind, self.name)?;
        match self.action {
            Action::Kept if self.kind == "Secret" => {
                f.write_str(" (exists; its credentials are never regenerated)")
            }
            Action::Kept => f.write_str(" (exists)"),
            Action::NotOurs => f.write_str(" (not made by falconeri deploy)"),
            _ => Ok(()),
        }
    }
}

/// The API resource of `kind`, and whether it lives in a namespace.
fn resource(kind: &str) -> Option<(ApiResource, bool)> {
    Some(match kind {
        "Namespace" => (ApiResource::erase::<Namespace>(&()), false),
        "ServiceAccount" => (ApiResource::erase::<ServiceAccount>(&()), true),
        "Role" => (ApiResource::erase::<Role>(&()), true),
        "RoleBinding" => (ApiResource::erase::<RoleBinding>(&()), true),
        "Secret" => (ApiResource::erase::<Secret>(&()), true),
        "PersistentVolumeClaim" => (ApiResource::erase::<PersistentVolumeClaim>(&()), true),
        "Service" => (ApiResource::erase::<Service>(&()), true),
        "Deployment" => (ApiResource::erase::<Deployment>(&()), true),
        // Not in the manifest: the worker Jobs falconerid creates.
        "Job" => (ApiResource::erase::<Job>(&()), true),
        _ => return None,
    })
}

/// The dynamic API for `kind` in `namespace`.
fn api(client: &Client, namespace: &str, kind: &str) -> Result<Api<DynamicObject>> {
    let (resource, namespaced) =
        resource(kind).ok_or_else(|| anyhow!("falconeri deploy does not handle {kind} objects"))?;
    Ok(if namespaced {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    })
}

/// Applies `objects` in order with server-side apply (field manager
/// [`FIELD_MANAGER`], forced, so falconeri's choices win over edits made by
/// hand), calling `report` after each.
///
/// Objects of the kinds in [`create_only`] are applied only when they do not
/// exist yet. A Secret that exists is left alone: the database was created
/// with the password in it, and a new one would lock falconerid out. That is
/// also why re-running deploy is safe. To change credentials, delete the
/// Secret (and, for the database password, the data: `undeploy --all`).
pub async fn apply(
    client: &Client,
    namespace: &str,
    objects: &[Value],
    mut report: impl FnMut(&Step),
) -> Result<Vec<Step>> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut steps = Vec::with_capacity(objects.len());
    for object in objects {
        let kind = object["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("a manifest object has no kind: {object}"))?;
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("a {kind} in the manifest has no name"))?;
        let api = api(client, namespace, kind)?;
        let exists = if create_only(kind) {
            match api.get_opt(name).await {
                Ok(found) => found.is_some(),
                // A namespace admin may not read the namespace itself;
                // applying it then either works or says why not.
                Err(_) if kind == "Namespace" => false,
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot read {kind}/{name}"));
                }
            }
        } else {
            false
        };
        let action = if exists {
            Action::Kept
        } else {
            api.patch(name, &params, &Patch::Apply(object))
                .await
                .with_context(|| format!("cannot apply {kind}/{name}"))?;
            Action::Applied
        };
        record(&mut steps, &mut report, kind, name, action);
    }
    Ok(steps)
}

/// Kinds deploy creates but never changes: Secrets (see [`apply`]), and the
/// namespace, which may belong to someone else and needs cluster-wide rights
/// to patch, which a namespace admin lacks.
fn create_only(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Secret")
}

/// The objects `undeploy` deletes, in order: falconerid first, so nothing
/// starts new work, then the services it uses, then its identity.
const REMOVED: [(&str, &str); 9] = [
    ("Deployment", cluster::FALCONERID),
    ("Service", cluster::FALCONERID),
    ("Deployment", cluster::MINIO),
    ("Service", cluster::MINIO),
    ("Deployment", cluster::POSTGRES),
    ("Service", cluster::POSTGRES),
    ("RoleBinding", cluster::FALCONERID),
    ("Role", cluster::FALCONERID),
    ("ServiceAccount", cluster::FALCONERID),
];

/// The data, deleted only by `undeploy --all`.
const DATA: [(&str, &str); 3] = [
    ("PersistentVolumeClaim", cluster::POSTGRES),
    ("Secret", cluster::SECRET),
    ("Secret", cluster::S3_SECRET),
];

/// The objects `undeploy` (with `all`, `undeploy --all`) deletes.
pub fn removed(all: bool) -> Vec<(&'static str, &'static str)> {
    let mut objects = REMOVED.to_vec();
    if all {
        objects.extend(DATA);
    }
    objects
}

/// Deletes the objects of a deployment (see [`removed`]), then the worker
/// Jobs falconerid started, whose pods and token Secrets go with them
/// (Kubernetes' garbage collector follows their owner references). Their
/// falconeri jobs end as failed once a falconerid sees the Jobs gone, and
/// can be retried. The namespace is never deleted: it may hold other
/// things, or have been made by someone else.
pub async fn remove(
    client: &Client,
    namespace: &str,
    all: bool,
    mut report: impl FnMut(&Step),
) -> Result<Vec<Step>> {
    let mut steps = delete(client, namespace, &removed(all), &mut report).await?;
    let jobs = api(client, namespace, "Job")?;
    let selector = cluster::pod_selector(cluster::COMPONENT_WORKER);
    let workers = jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .context("cannot list the worker Jobs")?;
    let names: Vec<String> = workers
        .items
        .iter()
        .filter_map(|job| job.metadata.name.clone())
        .collect();
    let objects: Vec<(&str, &str)> = names.iter().map(|name| ("Job", name.as_str())).collect();
    steps.extend(delete(client, namespace, &objects, report).await?);
    Ok(steps)
}

/// The objects only `deploy --development` makes, apart from the `s3`
/// Secret, which may hold credentials of your own by then.
pub const DEVELOPMENT_ONLY: [(&str, &str); 2] =
    [("Deployment", cluster::MINIO), ("Service", cluster::MINIO)];

/// Deletes `objects` in order, each only if it exists and carries
/// falconeri's label, so a Secret you made yourself (`--skip-secret`, or your
/// own `s3`) survives `undeploy --all`.
pub async fn delete(
    client: &Client,
    namespace: &str,
    objects: &[(&str, &str)],
    mut report: impl FnMut(&Step),
) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for &(kind, name) in objects {
        let api = api(client, namespace, kind)?;
        let existing = api
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read {kind}/{name}"))?;
        let action = match existing {
            None => Action::Absent,
            Some(object) if !is_ours(&object) => Action::NotOurs,
            Some(_) => match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => Action::Deleted,
                Err(kube::Error::Api(status)) if status.is_not_found() => Action::Absent,
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot delete {kind}/{name}"));
                }
            },
        };
        record(&mut steps, &mut report, kind, name, action);
    }
    Ok(steps)
}

/// Adds one step to the result and reports it as it happens.
fn record(
    steps: &mut Vec<Step>,
    report: &mut impl FnMut(&Step),
    kind: &str,
    name: &str,
    action: Action,
) {
    let step = Step {
        kind: kind.to_owned(),
        name: name.to_owned(),
        action,
    };
    report(&step);
    steps.push(step);
}

/// Whether `object` carries the label every object of a deployment has.
fn is_ours(object: &DynamicObject) -> bool {
    object
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(cluster::PART_OF_LABEL))
        .is_some_and(|value| value == cluster::PART_OF)
}

/// Checks that every object of a manifest is of a kind [`apply`] handles and
/// in `namespace` (or is that namespace).
pub fn check_objects(objects: &[Value], namespace: &str) -> Result<()> {
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let Some((resource, namespaced)) = resource(kind) else {
            bail!("the manifest holds a {kind:?}, which deploy does not handle");
        };
        if object["apiVersion"] != resource.api_version.as_str() {
            bail!(
                "the manifest's {kind} has apiVersion {}, not {}",
                object["apiVersion"],
                resource.api_version
            );
        }
        let expected = if namespaced {
            &object["metadata"]["namespace"]
        } else {
            &object["metadata"]["name"]
        };
        if expected != namespace {
            bail!("the manifest's {kind} is not in namespace {namespace}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeploy_keeps_the_data_unless_all() {
        let kept = removed(false);
        assert!(!kept.contains(&("PersistentVolumeClaim", cluster::POSTGRES)));
        assert!(!kept.iter().any(|(kind, _)| *kind == "Secret"));
        let all = removed(true);
        assert!(all.contains(&("PersistentVolumeClaim", cluster::POSTGRES)));
        assert!(all.contains(&("Secret", cluster::SECRET)));
        assert!(all.contains(&("Secret", cluster::S3_SECRET)));
    }

    #[test]
    fn every_kind_has_a_resource() {
        for (kind, _) in removed(true) {
            assert!(resource(kind).is_some(), "{kind}");
        }
        let (deployments, namespaced) = resource("Deployment").expect("known");
        assert_eq!(deployments.plural, "deployments");
        assert_eq!(deployments.api_version, "apps/v1");
        assert!(namespaced);
        assert!(!resource("Namespace").expect("known").1);
        assert!(resource("Pod").is_none());
    }
}
