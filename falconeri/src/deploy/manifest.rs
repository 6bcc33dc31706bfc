//! The deploy manifest: checks the user's choices, generates the credentials
//! of a new deployment, renders `templates/deploy_manifest.yml.hbs` with every
//! value JSON-quoted, and parses the result back into objects.
//!
//! The template is Handlebars by design, so every insertion goes through one
//! escape function ([`quote`]): a value can never add a line, a field or a
//! document, whatever it contains. The tests render hostile values and check
//! that the parsed objects are exactly the intended ones.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    cli::DeployArgs,
    cluster::{self, check_dns_label},
};

/// The template, compiled into the binary so `--dry-run` needs no files.
const TEMPLATE: &str = include_str!("../../templates/deploy_manifest.yml.hbs");
const TEMPLATE_NAME: &str = "deploy_manifest";

/// The MinIO image of `--development`: the last release MinIO published as
/// an image. Pinned, so a deployment does not change under the user.
pub const DEFAULT_MINIO_IMAGE: &str = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z";

/// The region in the development `s3` Secret. MinIO accepts any; S3 clients
/// insist on one.
const MINIO_REGION: &str = "us-east-1";

/// Credentials a new deployment gets. They come from the operating system's
/// CSPRNG (through `rand`'s thread generator, which it seeds) and use only
/// hex digits, so they need no escaping in the database URL.
#[derive(Clone)]
pub struct Secrets {
    pub database_password: String,
    pub token: String,
    pub minio_access_key_id: String,
    pub minio_secret_access_key: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    /// Fresh random credentials.
    pub fn generate() -> Secrets {
        Secrets {
            database_password: hex::encode(rand::random::<[u8; 24]>()),
            token: hex::encode(rand::random::<[u8; 32]>()),
            minio_access_key_id: format!("falconeri{}", hex::encode(rand::random::<[u8; 6]>())),
            minio_secret_access_key: hex::encode(rand::random::<[u8; 24]>()),
        }
    }
}

/// Everything the template inserts. Strings are JSON-quoted on the way in;
/// integers go through the `int` helper.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Values {
    pub namespace: String,
    pub labels: Labels,
    pub secret_name: String,
    pub s3_secret: String,
    pub falconerid: FalconeridValues,
    pub postgres: PostgresValues,
    /// The `falconeri` Secret, unless `--skip-secret`.
    pub secret: Option<SecretValues>,
    /// MinIO and its `s3` Secret, with `--development`.
    pub minio: Option<MinioValues>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Labels {
    pub part_of: String,
    pub managed_by: String,
    pub component: String,
    pub falconeri: String,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct FalconeridValues {
    pub name: String,
    pub component: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub replicas: u32,
    pub port: u16,
    pub listen: String,
    pub public_url: String,
    pub cpu: String,
    pub memory: String,
    pub database_url_key: String,
    pub token_key: String,
    /// The Secret with a Google Cloud key (`key.json`) to mount.
    pub gcs_key_secret: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PostgresValues {
    pub name: String,
    pub component: String,
    pub image: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password_key: String,
    pub cpu: String,
    pub memory: String,
    pub storage: String,
    pub storage_class_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SecretValues {
    pub name: String,
    pub database_password_key: String,
    pub database_password: String,
    pub database_url_key: String,
    pub database_url: String,
    pub token_key: String,
    pub token: String,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MinioValues {
    pub name: String,
    pub component: String,
    pub image: String,
    pub port: u16,
    pub secret: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub endpoint_url: String,
    pub region: String,
}

/// Checks the choices Kubernetes (or the images) would refuse, so a bad
/// flag fails before anything is rendered or sent. clap runs the same
/// checks on the command line; this covers arguments built in code.
pub fn validate(args: &DeployArgs) -> Result<()> {
    let check = |flag: &str, result: Result<String, String>| -> Result<()> {
        match result {
            Ok(_) => Ok(()),
            Err(problem) => bail!("invalid --{flag}: {problem}"),
        }
    };
    check(
        "namespace",
        check_dns_label(&args.cluster.namespace).map(|()| String::new()),
    )?;
    check("image", parse_image(&args.image))?;
    check("minio-image", parse_image(&args.minio_image))?;
    if args.replicas < 1 {
        bail!("invalid --replicas: falconerid needs at least 1 replica");
    }
    check("cpu", parse_quantity(&args.cpu))?;
    check("memory", parse_quantity(&args.memory))?;
    check("postgres-version", parse_image_tag(&args.postgres_version))?;
    check("postgres-cpu", parse_quantity(&args.postgres_cpu))?;
    check("postgres-memory", parse_quantity(&args.postgres_memory))?;
    check("postgres-storage", parse_quantity(&args.postgres_storage))?;
    if let Some(name) = &args.storage_class_name {
        check("storage-class-name", parse_object_name(name))?;
    }
    if let Some(name) = &args.gcs_key_secret {
        check("gcs-key-secret", parse_object_name(name))?;
    }
    Ok(())
}

/// Checks `args` and renders the manifest: YAML documents separated by
/// `---`, in the order they are applied.
pub fn render(args: &DeployArgs, secrets: &Secrets) -> Result<String> {
    validate(args)?;
    render_values(&values(args, secrets))
}

/// What the template inserts for `args`. Does not check `args`.
pub(crate) fn values(args: &DeployArgs, secrets: &Secrets) -> Values {
    let namespace = args.cluster.namespace.clone();
    let database_url = format!(
        "postgres://{user}:{password}@{host}.{namespace}.svc:{port}/{database}",
        user = cluster::POSTGRES_USER,
        password = secrets.database_password,
        host = cluster::POSTGRES,
        port = cluster::POSTGRES_PORT,
        database = cluster::POSTGRES_DATABASE,
    );
    Values {
        labels: Labels {
            part_of: cluster::PART_OF_LABEL.to_owned(),
            managed_by: cluster::MANAGED_BY_LABEL.to_owned(),
            component: cluster::COMPONENT_LABEL.to_owned(),
            falconeri: cluster::PART_OF.to_owned(),
        },
        secret_name: cluster::SECRET.to_owned(),
        s3_secret: cluster::S3_SECRET.to_owned(),
        falconerid: FalconeridValues {
            name: cluster::FALCONERID.to_owned(),
            component: cluster::COMPONENT_FALCONERID.to_owned(),
            image: args.image.clone(),
            image_pull_policy: args
                .image_pull_policy
                .map(|policy| policy.as_kubernetes().to_owned()),
            replicas: args.replicas,
            port: cluster::FALCONERID_PORT,
            listen: format!("0.0.0.0:{}", cluster::FALCONERID_PORT),
            public_url: format!(
                "http://{}.{namespace}.svc:{}",
                cluster::FALCONERID,
                cluster::FALCONERID_PORT
            ),
            cpu: args.cpu.clone(),
            memory: args.memory.clone(),
            database_url_key: cluster::SECRET_DATABASE_URL.to_owned(),
            token_key: cluster::SECRET_TOKEN.to_owned(),
            gcs_key_secret: args.gcs_key_secret.clone(),
        },
        postgres: PostgresValues {
            name: cluster::POSTGRES.to_owned(),
            component: cluster::COMPONENT_POSTGRES.to_owned(),
            image: format!("postgres:{}", args.postgres_version),
            port: cluster::POSTGRES_PORT,
            user: cluster::POSTGRES_USER.to_owned(),
            database: cluster::POSTGRES_DATABASE.to_owned(),
            password_key: cluster::SECRET_DATABASE_PASSWORD.to_owned(),
            cpu: args.postgres_cpu.clone(),
            memory: args.postgres_memory.clone(),
            storage: args.postgres_storage.clone(),
            storage_class_name: args.storage_class_name.clone(),
        },
        secret: (!args.skip_secret).then(|| SecretValues {
            name: cluster::SECRET.to_owned(),
            database_password_key: cluster::SECRET_DATABASE_PASSWORD.to_owned(),
            database_password: secrets.database_password.clone(),
            database_url_key: cluster::SECRET_DATABASE_URL.to_owned(),
            database_url,
            token_key: cluster::SECRET_TOKEN.to_owned(),
            token: secrets.token.clone(),
        }),
        minio: args.development.then(|| MinioValues {
            name: cluster::MINIO.to_owned(),
            component: cluster::COMPONENT_MINIO.to_owned(),
            image: args.minio_image.clone(),
            port: cluster::MINIO_PORT,
            secret: cluster::S3_SECRET.to_owned(),
            access_key_id: secrets.minio_access_key_id.clone(),
            secret_access_key: secrets.minio_secret_access_key.clone(),
            endpoint_url: format!(
                "http://{}.{namespace}.svc:{}",
                cluster::MINIO,
                cluster::MINIO_PORT
            ),
            region: MINIO_REGION.to_owned(),
        }),
        namespace,
    }
}

/// Renders the template with `values`, inserting each string JSON-quoted.
pub(crate) fn render_values(values: &Values) -> Result<String> {
    let mut registry = Handlebars::new();
    // A name the template misspells is an error, not an empty string.
    registry.set_strict_mode(true);
    registry.register_escape_fn(quote);
    registry.register_helper("int", Box::new(int_helper));
    registry
        .register_template_string(TEMPLATE_NAME, TEMPLATE)
        .context("the deploy manifest template is malformed")?;
    registry
        .render(TEMPLATE_NAME, values)
        .context("cannot render the deploy manifest")
}

/// Parses a rendered manifest into its objects, skipping empty documents.
pub fn parse(manifest: &str) -> Result<Vec<Value>> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(manifest).context("the deploy manifest is not valid YAML")?;
    Ok(documents
        .into_iter()
        .filter(|document| !document.is_null())
        .collect())
}

/// Quotes `value` as a JSON string that YAML reads back unchanged: JSON's
/// escapes are a subset of YAML's double-quoted ones. Beyond what JSON
/// requires, it escapes every character YAML does not allow raw in a
/// stream or reads as a line break (C1 controls, U+2028, U+2029, U+FEFF,
/// U+FFFE, U+FFFF), so the value survives any YAML parser intact.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                // Writing to a String cannot fail.
                let _ = write!(quoted, "\\u{:04x}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `{{int value}}`: inserts an unsigned integer as a YAML number. Anything
/// else is an error, so the helper cannot become a way to insert raw text.
fn int_helper(
    helper: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = helper
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("int", 0))?
        .value();
    let number = value
        .as_u64()
        .ok_or(RenderErrorReason::InvalidParamType("an unsigned integer"))?;
    out.write(&number.to_string())?;
    Ok(())
}

/// clap's parser for image references: Kubernetes takes any string, but an
/// empty one or one with spaces can never be pulled.
pub fn parse_image(image: &str) -> Result<String, String> {
    if image.is_empty() {
        return Err("the image must not be empty".to_owned());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{image:?} is not an image reference: it contains spaces or control characters"
        ));
    }
    Ok(image.to_owned())
}

/// clap's parser for an image tag, such as `--postgres-version 18`: letters,
/// digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`.
pub fn parse_image_tag(tag: &str) -> Result<String, String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !tag.starts_with(['.', '-']);
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(format!(
            "{tag:?} is not an image tag (letters, digits, '_', '.' and '-', such as 18 or 17.6)"
        ))
    }
}

/// clap's parser for the name of an object such as a storage class or a
/// Secret: a DNS subdomain, as Kubernetes requires.
pub fn parse_object_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| check_dns_label(part).is_ok());
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use lower-case letters, digits, '-' and '.'"
        ))
    }
}

/// clap's parser for a resource quantity, such as `500m`, `2`, `512Mi` or
/// `1e3`: a non-negative decimal number and an optional suffix, as
/// Kubernetes parses them.
pub fn parse_quantity(quantity: &str) -> Result<String, String> {
    let invalid = || {
        Err(format!(
            "{quantity:?} is not a Kubernetes quantity (such as 500m, 2, 512Mi or 10Gi)"
        ))
    };
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    if !number.chars().any(|c| c.is_ascii_digit()) || number.matches('.').count() > 1 {
        return invalid();
    }
    let suffix_ok = match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti"
        | "Pi" | "Ei" => true,
        exponent => match exponent.strip_prefix(['e', 'E']) {
            Some(power) => {
                let digits = power.strip_prefix(['+', '-']).unwrap_or(power);
                !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
            }
            None => false,
        },
    };
    if suffix_ok {
        Ok(quantity.to_owned())
    } else {
        invalid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// The deploy arguments of a command line such as `deploy --development`.
    fn args(line: &str) -> DeployArgs {
        let words = std::iter::once("falconeri").chain(line.split_whitespace());
        match Cli::try_parse_from(words).expect("parses").command {
            Command::Deploy(args) => *args,
            other => panic!("not deploy: {other:?}"),
        }
    }

    fn secrets() -> Secrets {
        Secrets {
            database_password: "db-password".to_owned(),
            token: "the-token".to_owned(),
            minio_access_key_id: "minio-key".to_owned(),
            minio_secret_access_key: "minio-secret".to_owned(),
        }
    }

    fn render_objects(line: &str) -> Vec<Value> {
        parse(&render(&args(line), &secrets()).expect("renders")).expect("parses")
    }

    /// `Kind/name` of every object, in order.
    fn kinds_and_names(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|object| {
                format!("{}/{}", object["kind"], object["metadata"]["name"]).replace('"', "")
            })
            .collect()
    }

    fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
    }

    #[test]
    fn default_deploy_has_falconerid_postgres_and_the_secret() {
        let objects = render_objects("deploy");
        assert_eq!(
            kinds_and_names(&objects),
            [
                "Namespace/falconeri",
                "ServiceAccount/falconerid",
                "Role/falconerid",
                "RoleBinding/falconerid",
                "Secret/falconeri",
                "PersistentVolumeClaim/falconeri-postgres",
                "Service/falconeri-postgres",
                "Service/falconerid",
                "Deployment/falconeri-postgres",
                "Deployment/falconerid",
            ]
        );
    }

    #[test]
    fn development_adds_minio_and_its_secret() {
        let objects = render_objects("deploy --development --namespace dev");
        let names = kinds_and_names(&objects);
        for expected in [
            "Secret/s3",
            "Service/falconeri-minio",
            "Deployment/falconeri-minio",
        ] {
            assert!(names.iter().any(|name| name == expected), "{names:?}");
        }
        let s3 = &find(&objects, "Secret", "s3")["stringData"];
        assert_eq!(
            s3["AWS_ENDPOINT_URL"],
            "http://falconeri-minio.dev.svc:9000"
        );
        assert_eq!(s3["AWS_ACCESS_KEY_ID"], "minio-key");
        assert_eq!(s3["AWS_SECRET_ACCESS_KEY"], "minio-secret");
        assert_eq!(s3["AWS_REGION"], "us-east-1");
        assert_eq!(objects.len(), 13);
    }

    #[test]
    fn skip_secret_leaves_the_secret_out_but_still_uses_it() {
        let objects = render_objects("deploy --skip-secret");
        assert!(!kinds_and_names(&objects).contains(&"Secret/falconeri".to_owned()));
        let container = &find(&objects, "Deployment", "falconerid")["spec"]["template"]["spec"]["containers"]
            [0];
        let database_url = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|var| var["name"] == "FALCONERI_DATABASE_URL")
            .expect("FALCONERI_DATABASE_URL");
        assert_eq!(
            database_url["valueFrom"]["secretKeyRef"],
            serde_json::json!({ "name": "falconeri", "key": "database-url" })
        );
    }

    #[test]
    fn every_object_is_labelled_and_namespaced() {
        for object in render_objects("deploy --development --namespace team-a") {
            let labels = &object["metadata"]["labels"];
            assert_eq!(labels[cluster::PART_OF_LABEL], "falconeri", "{object}");
            assert_eq!(labels[cluster::MANAGED_BY_LABEL], "falconeri", "{object}");
            if object["kind"] == "Namespace" {
                assert_eq!(object["metadata"]["name"], "team-a");
            } else {
                assert!(labels[cluster::COMPONENT_LABEL].is_string(), "{object}");
                assert_eq!(object["metadata"]["namespace"], "team-a", "{object}");
            }
        }
    }

    #[test]
    fn deployments_select_their_own_pods() {
        for object in render_objects("deploy --development") {
            if object["kind"] != "Deployment" && object["kind"] != "Service" {
                continue;
            }
            let selector = if object["kind"] == "Deployment" {
                &object["spec"]["selector"]["matchLabels"]
            } else {
                &object["spec"]["selector"]
            };
            let component = &object["metadata"]["labels"][cluster::COMPONENT_LABEL];
            assert_eq!(selector[cluster::COMPONENT_LABEL], *component, "{object}");
            assert_eq!(selector[cluster::PART_OF_LABEL], "falconeri", "{object}");
            if object["kind"] == "Deployment" {
                let pod_labels = &object["spec"]["template"]["metadata"]["labels"];
                assert_eq!(pod_labels[cluster::COMPONENT_LABEL], *component);
            }
        }
    }

    #[test]
    fn role_grants_exactly_what_the_executor_needs() {
        let objects = render_objects("deploy");
        let rules = &find(&objects, "Role", "falconerid")["rules"];
        assert_eq!(
            *rules,
            serde_json::json!([
                { "apiGroups": ["batch"], "resources": ["jobs"],
                  "verbs": ["create", "get", "list", "watch", "delete"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "delete"] },
            ])
        );
        assert!(!rules.to_string().contains('*'));
    }

    #[test]
    fn falconerid_runs_as_configured() {
        let objects = render_objects(
            "deploy --namespace ns1 --image reg.example/fd:1 --replicas 3 --cpu 1 --memory 2Gi \
             --image-pull-policy never",
        );
        let deployment = find(&objects, "Deployment", "falconerid");
        assert_eq!(deployment["spec"]["replicas"], 3);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "falconerid");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 10001);
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "reg.example/fd:1");
        assert_eq!(container["imagePullPolicy"], "Never");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["ports"][0]["containerPort"], 8089);
        assert_eq!(container["resources"]["requests"]["cpu"], "1");
        assert_eq!(container["resources"]["limits"]["memory"], "2Gi");
        let env = |name: &str| {
            container["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|var| var["name"] == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .clone()
        };
        assert_eq!(env("FALCONERI_EXECUTOR")["value"], "kubernetes");
        assert_eq!(env("MALLOC_ARENA_MAX")["value"], "2");
        assert_eq!(
            env("FALCONERI_PUBLIC_URL")["value"],
            "http://falconerid.ns1.svc:8089"
        );
        assert_eq!(env("FALCONERI_WORKER_IMAGE")["value"], "reg.example/fd:1");
        assert_eq!(
            env("FALCONERI_KUBERNETES_WORKER_IMAGE_PULL_POLICY")["value"],
            "Never"
        );
        assert_eq!(
            env("FALCONERI_KUBERNETES_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(
            env("FALCONERI_TOKEN")["valueFrom"]["secretKeyRef"]["key"],
            "token"
        );
        let service = find(&objects, "Service", "falconerid");
        assert_eq!(service["spec"]["ports"][0]["port"], 8089);
    }

    #[test]
    fn postgres_keeps_its_data_on_the_volume() {
        let objects = render_objects(
            "deploy --namespace ns2 --postgres-version 17 --storage-class-name fast-ssd --postgres-storage 50Gi",
        );
        let claim = find(&objects, "PersistentVolumeClaim", "falconeri-postgres");
        assert_eq!(claim["spec"]["storageClassName"], "fast-ssd");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "50Gi");
        let deployment = find(&objects, "Deployment", "falconeri-postgres");
        assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "falconeri-postgres"
        );
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "postgres:17");
        let mount = container["volumeMounts"][0]["mountPath"]
            .as_str()
            .expect("mount path");
        let pgdata = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|var| var["name"] == "PGDATA")
            .expect("PGDATA")["value"]
            .as_str()
            .expect("PGDATA value");
        assert!(
            pgdata.starts_with(&format!("{mount}/")),
            "{pgdata} not under {mount}"
        );
        let secret = find(&objects, "Secret", "falconeri");
        assert_eq!(
            secret["stringData"]["database-url"],
            "postgres://falconeri:db-password@falconeri-postgres.ns2.svc:5432/falconeri"
        );
        assert_eq!(secret["stringData"]["database-password"], "db-password");
        assert_eq!(secret["stringData"]["token"], "the-token");

        // Without a class, the cluster's default applies.
        let defaults = render_objects("deploy");
        let claim = find(&defaults, "PersistentVolumeClaim", "falconeri-postgres");
        assert!(claim["spec"].get("storageClassName").is_none());
    }

    #[test]
    fn a_gcs_key_secret_is_mounted_for_falconerid() {
        let objects = render_objects("deploy --gcs-key-secret gcs-key");
        let pod = &find(&objects, "Deployment", "falconerid")["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|volume| volume["name"] == "gcs")
            .expect("gcs volume");
        assert_eq!(volume["secret"]["secretName"], "gcs-key");
        let container = &pod["containers"][0];
        let mount = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|mount| mount["name"] == "gcs")
            .expect("gcs mount")["mountPath"]
            .as_str()
            .expect("path")
            .to_owned();
        let credentials = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|var| var["name"] == "GOOGLE_APPLICATION_CREDENTIALS")
            .expect("GOOGLE_APPLICATION_CREDENTIALS")["value"]
            .clone();
        assert_eq!(credentials, format!("{mount}/key.json"));

        // Without it, nothing about GCS: Application Default Credentials.
        let plain = render_objects("deploy");
        let text = serde_json::to_string(&plain).expect("json");
        assert!(!text.contains("GOOGLE_APPLICATION_CREDENTIALS"));
    }

    #[test]
    fn generated_secrets_are_random_and_url_safe() {
        let (a, b) = (Secrets::generate(), Secrets::generate());
        assert_ne!(a.database_password, b.database_password);
        assert_ne!(a.token, b.token);
        assert_eq!(a.token.len(), 64);
        for value in [
            &a.database_password,
            &a.token,
            &a.minio_access_key_id,
            &a.minio_secret_access_key,
        ] {
            assert!(value.chars().all(|c| c.is_ascii_alphanumeric()), "{value}");
        }
        // falconerid refuses tokens shorter than 16 characters.
        assert!(a.token.len() >= 16);
    }

    #[test]
    fn bad_choices_are_refused_before_rendering() {
        let mut bad = args("deploy");
        bad.cluster.namespace = "Bad_Name".to_owned();
        let err = render(&bad, &secrets()).expect_err("refused");
        assert!(err.to_string().contains("--namespace"), "{err}");

        let mut bad = args("deploy");
        bad.image = String::new();
        let err = render(&bad, &secrets()).expect_err("refused");
        assert!(err.to_string().contains("--image"), "{err}");

        let mut bad = args("deploy");
        bad.replicas = 0;
        let err = render(&bad, &secrets()).expect_err("refused");
        assert!(err.to_string().contains("--replicas"), "{err}");

        let mut bad = args("deploy");
        bad.memory = "lots".to_owned();
        let err = render(&bad, &secrets()).expect_err("refused");
        assert!(err.to_string().contains("--memory"), "{err}");

        // clap refuses them on the command line too.
        for line in [
            "deploy --namespace Bad",
            "deploy --image=",
            "deploy --replicas 0",
            "deploy --cpu 1x",
            "deploy --postgres-version 18:latest",
            "deploy --storage-class-name Fast",
            "deploy --gcs-key-secret a_b",
        ] {
            let words = std::iter::once("falconeri").chain(line.split_whitespace());
            assert!(Cli::try_parse_from(words).is_err(), "{line}");
        }
    }

    #[test]
    fn quantities() {
        for good in [
            "1", "250m", "0.5", ".5", "1.", "512Mi", "10Gi", "1e3", "2E-1", "1k", "100M", "3Ti",
        ] {
            assert!(parse_quantity(good).is_ok(), "{good}");
        }
        for bad in [
            "", "m", "1.2.3", "-1", "1 Gi", "1gi", "1e", "1Kb", "1e3.5", "1\n",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_tags_and_storage_class_names() {
        assert!(parse_image_tag("18").is_ok());
        assert!(parse_image_tag("17.6-bookworm").is_ok());
        for bad in ["", "-x", ".x", "a:b", "a/b", &"1".repeat(129)] {
            assert!(parse_image_tag(bad).is_err(), "{bad:?}");
        }
        assert!(parse_object_name("standard-rwo").is_ok());
        assert!(parse_object_name("ebs.csi.aws.com").is_ok());
        for bad in ["", "Fast", "a..b", ".a", "a_b"] {
            assert!(parse_object_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quote_is_json_and_yaml() {
        for value in [
            "plain",
            "",
            "line\nbreak",
            "quote \" and ' and \\",
            "{{namespace}}",
            "key: value",
            "---",
            "# comment",
            "tab\tand\rreturn",
            "\u{0}\u{1}\u{7f}\u{85}\u{2028}\u{2029}\u{feff}\u{ffff}",
            "é ✓ 😀",
            "- item",
            "&anchor *alias !tag %directive @ `",
            "yes",
            "0x1F",
        ] {
            let quoted = quote(value);
            let from_json: String = serde_json::from_str(&quoted).expect("valid JSON");
            assert_eq!(from_json, value);
            let from_yaml: String = serde_saphyr::from_str(&quoted).expect("valid YAML");
            assert_eq!(from_yaml, value);
            assert!(!quoted.contains('\n'));
        }
    }

    #[test]
    fn template_never_inserts_raw_text() {
        assert!(!TEMPLATE.contains("{{{"), "triple braces insert raw text");
        assert!(!TEMPLATE.contains("{{&"), "{{& inserts raw text");
        assert!(!TEMPLATE.contains("{{~{"), "raw insertion");
    }

    #[test]
    fn int_refuses_strings() {
        let mut values = values(&args("deploy"), &secrets());
        values.falconerid.replicas = 2;
        let manifest = render_values(&values).expect("renders");
        assert!(manifest.contains("replicas: 2\n"));

        let mut registry = Handlebars::new();
        registry.register_helper("int", Box::new(int_helper));
        let refused =
            registry.render_template("{{int x}}", &serde_json::json!({ "x": "1\nkind: x" }));
        assert!(refused.is_err());
    }

    /// Hostile strings: YAML syntax, template syntax, line breaks, document
    /// markers, comments, quotes, and characters YAML reads as line breaks.
    const HOSTILE: [&str; 6] = [
        "x\nkind: Secret\n---\napiVersion: v1",
        "\" injected: true\n  evil: '",
        "{{namespace}} {{{raw}}} #comment",
        ": ---\r\n# not a comment",
        "\\\" \\n \u{2028}next\u{85}line\u{0}",
        "- [a, b]\n- {c: d}\n... &x *x !!str",
    ];

    /// Replaces every string leaf of `value` by what `map` gives it.
    fn map_strings(value: &Value, map: &impl Fn(&str) -> String) -> Value {
        match value {
            Value::String(s) => Value::String(map(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| map_strings(v, map)).collect())
            }
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), map_strings(v, map)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    #[test]
    fn hostile_values_stay_in_their_fields() {
        // Every free-form value gets a placeholder in one rendering and a
        // hostile string in the other. The hostile manifest must parse to
        // the placeholder manifest with each placeholder replaced: the same
        // objects, keys and list lengths, and every value intact where it
        // belongs and nowhere else.
        let mut base =
            args("deploy --development --storage-class-name x --image-pull-policy always");
        let mut hostile = base.clone();
        type Field = fn(&mut DeployArgs) -> &mut String;
        let fields: [(&str, Field); 9] = [
            ("namespace", |a| &mut a.cluster.namespace),
            ("image", |a| &mut a.image),
            ("minio", |a| &mut a.minio_image),
            ("cpu", |a| &mut a.cpu),
            ("memory", |a| &mut a.memory),
            ("pgversion", |a| &mut a.postgres_version),
            ("pgcpu", |a| &mut a.postgres_cpu),
            ("pgmemory", |a| &mut a.postgres_memory),
            ("pgstorage", |a| &mut a.postgres_storage),
        ];
        let mut replacements = Vec::new();
        for (i, (name, field)) in fields.iter().enumerate() {
            let placeholder = format!("@@{name}@@");
            let evil = format!("{}<{name}>", HOSTILE[i % HOSTILE.len()]);
            *field(&mut base) = placeholder.clone();
            *field(&mut hostile) = evil.clone();
            replacements.push((placeholder, evil));
        }
        base.storage_class_name = Some("@@class@@".to_owned());
        hostile.storage_class_name = Some(format!("{}<class>", HOSTILE[3]));
        replacements.push(("@@class@@".to_owned(), format!("{}<class>", HOSTILE[3])));
        base.gcs_key_secret = Some("@@gcs@@".to_owned());
        hostile.gcs_key_secret = Some(format!("{}<gcs>", HOSTILE[0]));
        replacements.push(("@@gcs@@".to_owned(), format!("{}<gcs>", HOSTILE[0])));

        let secret_names = ["password", "token", "minio_key", "minio_secret"];
        let mut base_secrets = secrets();
        let mut hostile_secrets = secrets();
        for (i, name) in secret_names.iter().enumerate() {
            let placeholder = format!("@@{name}@@");
            let evil = format!("{}<{name}>", HOSTILE[(i + 2) % HOSTILE.len()]);
            let (b, h) = match i {
                0 => (
                    &mut base_secrets.database_password,
                    &mut hostile_secrets.database_password,
                ),
                1 => (&mut base_secrets.token, &mut hostile_secrets.token),
                2 => (
                    &mut base_secrets.minio_access_key_id,
                    &mut hostile_secrets.minio_access_key_id,
                ),
                _ => (
                    &mut base_secrets.minio_secret_access_key,
                    &mut hostile_secrets.minio_secret_access_key,
                ),
            };
            *b = placeholder.clone();
            *h = evil.clone();
            replacements.push((placeholder, evil));
        }

        let expected: Vec<Value> =
            parse(&render_values(&values(&base, &base_secrets)).expect("renders"))
                .expect("parses")
                .iter()
                .map(|object| {
                    map_strings(object, &|s| {
                        replacements
                            .iter()
                            .fold(s.to_owned(), |s, (from, to)| s.replace(from, to))
                    })
                })
                .collect();
        let manifest = render_values(&values(&hostile, &hostile_secrets)).expect("renders");
        let actual = parse(&manifest).expect("the hostile manifest parses");
        assert_eq!(actual.len(), expected.len());
        assert_eq!(actual, expected);
        // And each placeholder was actually used somewhere.
        let base_text = render_values(&values(&base, &base_secrets)).expect("renders");
        for (placeholder, _) in &replacements {
            assert!(
                base_text.contains(placeholder.as_str()),
                "{placeholder} unused"
            );
        }
    }
}
