//! Reaching a falconeri deployment in Kubernetes from the CLI: the user's
//! kubeconfig (or the in-cluster config), the namespace falconeri lives in,
//! and the names `falconeri deploy` gives its objects, which `proxy`, `db` and
//! `undeploy` look up again. The names are part of the deployment's contract:
//! changing one strands existing deployments.

use anyhow::{Context, Result};
use clap::Args;

/// The namespace falconeri deploys into unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "falconeri";

/// Labels every object of a deployment carries.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`PART_OF_LABEL`] and [`MANAGED_BY_LABEL`].
pub const PART_OF: &str = "falconeri";

/// Values of [`COMPONENT_LABEL`]. A component's pods carry
/// `PART_OF_LABEL=PART_OF` and `COMPONENT_LABEL=<component>`, which is what its
/// Deployment and Service select (see [`pod_selector`]).
pub const COMPONENT_FALCONERID: &str = "falconerid";
pub const COMPONENT_POSTGRES: &str = "postgres";
pub const COMPONENT_MINIO: &str = "minio";
/// The component falconerid's Kubernetes executor gives worker Jobs, their
/// pods and their token Secrets (with `PART_OF_LABEL=PART_OF`).
pub const COMPONENT_WORKER: &str = "worker";

/// The falconerid image `falconeri deploy` uses unless told otherwise: the
/// one `just image` builds for this version. It also holds the worker binary
/// that the Kubernetes executor copies into every worker pod.
pub const DEFAULT_IMAGE: &str = concat!("falconeri/falconerid:", env!("CARGO_PKG_VERSION"));

/// falconerid: ServiceAccount, Role, RoleBinding, Deployment and Service.
pub const FALCONERID: &str = "falconerid";
pub const FALCONERID_PORT: u16 = 8089;

/// The Secret holding the generated database password and API token.
pub const SECRET: &str = "falconeri";
pub const SECRET_DATABASE_PASSWORD: &str = "database-password";
pub const SECRET_DATABASE_URL: &str = "database-url";
pub const SECRET_TOKEN: &str = "token";

/// PostgreSQL: PersistentVolumeClaim, Deployment and Service.
pub const POSTGRES: &str = "falconeri-postgres";
pub const POSTGRES_PORT: u16 = 5432;
pub const POSTGRES_USER: &str = "falconeri";
pub const POSTGRES_DATABASE: &str = "falconeri";

/// MinIO (`deploy --development` only): Deployment and Service, plus the
/// `s3` Secret that jobs mount for credentials.
pub const MINIO: &str = "falconeri-minio";
pub const MINIO_PORT: u16 = 9000;
pub const S3_SECRET: &str = "s3";

/// The label selector matching the pods of `component`, such as
/// `app.kubernetes.io/part-of=falconeri,app.kubernetes.io/component=falconerid`.
pub fn pod_selector(component: &str) -> String {
    format!("{PART_OF_LABEL}={PART_OF},{COMPONENT_LABEL}={component}")
}

/// Checks that `name` is a DNS label (RFC 1123), as Kubernetes requires of a
/// namespace: at most 63 lower-case letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{name:?} must be 1 to 63 characters long (a DNS label)"
        ));
    }
    if !name.chars().all(|c| alphanumeric(c) || c == '-')
        || !name.starts_with(alphanumeric)
        || !name.ends_with(alphanumeric)
    {
        return Err(format!(
            "{name:?} is not a DNS label: use lower-case letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// clap's parser for `--namespace`: Kubernetes refuses any other name, so
/// refuse it before contacting the cluster.
fn parse_namespace(name: &str) -> Result<String, String> {
    check_dns_label(name).map(|()| name.to_owned())
}

/// Which cluster and namespace a command works on.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterArgs {
    /// The namespace falconeri is deployed in.
    #[arg(
        long,
        env = "FALCONERI_NAMESPACE",
        default_value = DEFAULT_NAMESPACE,
        value_parser = parse_namespace
    )]
    pub namespace: String,

    /// The kubeconfig context to use (default: the current context).
    #[arg(long, env = "FALCONERI_KUBE_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// A client for the chosen context: the kubeconfig named by KUBECONFIG or
    /// ~/.kube/config, else the in-cluster service account.
    pub async fn client(&self) -> Result<kube::Client> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.context {
            // An explicit context must come from a kubeconfig.
            Some(_) => kube::Config::from_kubeconfig(&options)
                .await
                .context("reading the kubeconfig")?,
            None => kube::Config::infer()
                .await
                .context("finding a Kubernetes configuration (kubeconfig or in-cluster)")?,
        };
        kube::Client::try_from(config).context("building the Kubernetes client")
    }
}

/// The value of `key` in the Secret `name`, as text; `None` when the Secret
/// or the key does not exist.
pub async fn read_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read Secret {name} in namespace {namespace}"))?;
    let Some(value) = secret
        .and_then(|s| s.data)
        .and_then(|mut data| data.remove(key))
    else {
        return Ok(None);
    };
    String::from_utf8(value.0)
        .map(Some)
        .with_context(|| format!("key {key} of Secret {name} is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_must_be_dns_labels() {
        for good in ["falconeri", "a", "team-1", "0x", &"a".repeat(63)] {
            assert_eq!(check_dns_label(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Falconeri",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "a b",
            "a\nb",
            &"a".repeat(64),
        ] {
            assert!(check_dns_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pod_selectors_name_part_of_and_component() {
        assert_eq!(
            pod_selector(COMPONENT_POSTGRES),
            "app.kubernetes.io/part-of=falconeri,app.kubernetes.io/component=postgres"
        );
    }
}
