//! `falconeri deploy` and `falconeri undeploy`: render the manifest
//! ([`manifest`]) and print it, or apply it to the cluster and take it down
//! again ([`apply`]).

pub mod apply;
pub mod manifest;

use anyhow::Result;

use crate::{
    cli::{DeployArgs, OutputFormat, UndeployArgs},
    config::Config,
    output,
};
pub use manifest::{
    DEFAULT_MINIO_IMAGE, parse_image, parse_image_tag, parse_object_name, parse_quantity,
};

/// `falconeri deploy`.
pub async fn deploy(config: &Config, args: &DeployArgs) -> Result<()> {
    // Rendered (and checked) before the cluster is contacted, so a bad flag
    // fails fast, and --dry-run needs no cluster at all.
    let rendered = manifest::render(args, &manifest::Secrets::generate())?;
    if args.dry_run {
        print!("{rendered}");
        return Ok(());
    }
    let objects = manifest::parse(&rendered)?;
    let namespace = &args.cluster.namespace;
    apply::check_objects(&objects, namespace)?;
    let client = args.cluster.client().await?;
    let text = config.output == OutputFormat::Text;
    let report = |step: &apply::Step| {
        if text {
            println!("{step}");
        }
    };
    let mut steps = apply::apply(&client, namespace, &objects, report).await?;
    if !args.development {
        // A deployment matches its flags: MinIO from an earlier
        // `--development` goes. Objects that were never there are not news.
        let pruned = apply::delete(&client, namespace, &apply::DEVELOPMENT_ONLY, |step| {
            if step.action != apply::Action::Absent {
                report(step);
            }
        })
        .await?;
        steps.extend(
            pruned
                .into_iter()
                .filter(|step| step.action != apply::Action::Absent),
        );
    }
    if text {
        println!(
            "\nfalconeri is deployed in namespace {namespace}. Run `falconeri proxy \
             --namespace {namespace}` to reach it from this machine."
        );
        Ok(())
    } else {
        output::print_json(&steps)
    }
}

/// `falconeri undeploy`.
pub async fn undeploy(config: &Config, args: &UndeployArgs) -> Result<()> {
    let namespace = &args.cluster.namespace;
    let client = args.cluster.client().await?;
    let text = config.output == OutputFormat::Text;
    let steps = apply::remove(&client, namespace, args.all, |step| {
        if text {
            println!("{step}");
        }
    })
    .await?;
    if !text {
        return output::print_json(&steps);
    }
    if !args.all {
        println!(
            "\nKept the data (PersistentVolumeClaim/{} and the Secrets); \
             `falconeri undeploy --all` deletes it.",
            crate::cluster::POSTGRES
        );
    }
    println!("The namespace {namespace} itself is left in place.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn undeploy_all_removes_everything_deploy_makes_but_the_namespace() {
        let Command::Deploy(args) = Cli::try_parse_from(["falconeri", "deploy", "--development"])
            .expect("parses")
            .command
        else {
            panic!("not deploy");
        };
        let rendered = manifest::render(&args, &manifest::Secrets::generate()).expect("renders");
        let objects = manifest::parse(&rendered).expect("parses");
        apply::check_objects(&objects, "falconeri").expect("all kinds handled");
        let mut deployed: Vec<(String, String)> = objects
            .iter()
            .filter(|object| object["kind"] != "Namespace")
            .map(|object| {
                (
                    object["kind"].as_str().expect("kind").to_owned(),
                    object["metadata"]["name"]
                        .as_str()
                        .expect("name")
                        .to_owned(),
                )
            })
            .collect();
        let mut removed: Vec<(String, String)> = apply::removed(true)
            .into_iter()
            .map(|(kind, name)| (kind.to_owned(), name.to_owned()))
            .collect();
        deployed.sort();
        removed.sort();
        assert_eq!(deployed, removed);
    }
}
