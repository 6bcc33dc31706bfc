//! `falconeri completions` and `falconeri man`: shell completion scripts and
//! roff man pages, generated from the clap definitions in [`crate::cli`] so
//! they always describe the commands this binary really has.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use serde::Serialize;

use crate::{cli::Cli, config::Config, output};

/// The name users type, which completion scripts register under.
const BIN_NAME: &str = "falconeri";

/// `falconeri completions SHELL`: the script goes to stdout whatever the
/// output format, as `schema` prints its JSON Schema: it is a file for the
/// shell, not a result to format.
pub fn completions(shell: Shell) -> Result<()> {
    let script = completion_script(shell);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .context("cannot write the completion script to stdout")
}

/// The completion script for `shell`.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut completion_command(), BIN_NAME, &mut script);
    script
}

/// The command tree the completions describe: [`Cli`] without its hidden
/// subcommands. clap_complete offers hidden subcommands like any other
/// (clap-rs/clap#1335), and clap has no way to remove a subcommand, so the
/// root is put together again from [`Cli`]'s own flags and its visible
/// subcommands, taken whole. Only the root hides anything (`internal`).
fn completion_command() -> clap::Command {
    let full = Cli::command();
    // Cli's name and version, as `&'static str`s (clap takes no `String`s
    // without its `string` feature).
    let mut root = clap::Command::new(BIN_NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|command| !command.is_hide_set())
                .cloned(),
        );
    if let Some(about) = full.get_about() {
        root = root.about(about.clone());
    }
    root
}

/// `falconeri man [--out DIR]`.
pub fn man(config: &Config, out: Option<&Path>) -> Result<()> {
    let Some(dir) = out else {
        let page = main_page()?;
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(&page)
            .and_then(|()| stdout.flush())
            .context("cannot write the man page to stdout");
    };
    let pages = write_pages(dir)?;
    if config.json() {
        return output::print_json(&Written { dir, pages: &pages });
    }
    println!("Wrote {} man pages to {}:", pages.len(), dir.display());
    for page in &pages {
        println!("  {}", page.display());
    }
    Ok(())
}

/// What `man --out DIR -o json` prints.
#[derive(Serialize)]
struct Written<'a> {
    /// The directory, as given.
    dir: &'a Path,
    /// Every page written, in the order of the command tree.
    pages: &'a [PathBuf],
}

/// falconeri(1): the top-level page, which lists the commands.
pub fn main_page() -> Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command())
        .render(&mut page)
        .context("cannot render the man page")?;
    Ok(page)
}

/// Writes falconeri.1 and one page per visible command (`falconeri-job-run.1`)
/// into `dir`, creating it, and returns their paths, parents first.
pub fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = Vec::new();
    write_tree(command(), dir, &mut pages)?;
    Ok(pages)
}

/// The command tree as the man pages show it: built, so each subcommand
/// carries its full name (`falconeri-job-run`) and the global flags, and
/// without clap's `help` subcommand, which needs no page of its own.
fn command() -> clap::Command {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    command
}

fn write_tree(command: clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> Result<()> {
    let children: Vec<clap::Command> = command
        .get_subcommands()
        // Hidden commands (`internal`) are not for people.
        .filter(|child| !child.is_hide_set())
        .cloned()
        .collect();
    let page = clap_mangen::Man::new(command);
    let path = dir.join(page.get_filename());
    page.generate_to(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    pages.push(path);
    for child in children {
        write_tree(child, dir, pages)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The commands people see at the top level.
    fn visible_commands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .filter(|command| !command.is_hide_set())
            .map(|command| command.get_name().to_owned())
            .collect()
    }

    #[test]
    fn every_shell_completes_every_visible_command() {
        let commands = visible_commands();
        assert!(commands.iter().any(|c| c == "completions"), "{commands:?}");
        for shell in Shell::value_variants() {
            let script = String::from_utf8(completion_script(*shell)).expect("utf-8 script");
            for command in &commands {
                assert!(
                    script.contains(command.as_str()),
                    "{shell} completions lack `{command}`"
                );
            }
            // Nested commands and flags are there too.
            for word in ["describe", "validate", "output", "outcome"] {
                assert!(script.contains(word), "{shell} completions lack `{word}`");
            }
            // So are the values of flags that have a fixed set, in the
            // shells whose scripts complete values (clap_complete's elvish
            // and PowerShell scripts complete names only).
            if matches!(shell, Shell::Bash | Shell::Zsh | Shell::Fish) {
                for word in ["publishing", "lease_expired", "json"] {
                    assert!(script.contains(word), "{shell} completions lack `{word}`");
                }
            }
        }
    }

    #[test]
    fn completion_root_is_named_and_versioned_like_the_cli() {
        let cli = Cli::command();
        let root = completion_command();
        assert_eq!(root.get_name(), cli.get_name());
        assert_eq!(root.get_version(), cli.get_version());
        assert_eq!(root.get_arguments().count(), cli.get_arguments().count());
    }

    #[test]
    fn completions_leave_out_hidden_commands() {
        // `internal` appears nowhere in the visible command tree, so any
        // mention would be the hidden command leaking.
        for shell in Shell::value_variants() {
            let script = String::from_utf8(completion_script(*shell)).expect("utf-8 script");
            assert!(
                !script.contains("internal"),
                "{shell} completions offer the hidden `internal` command"
            );
        }
    }

    #[test]
    fn main_page_lists_the_commands() {
        let page = String::from_utf8(main_page().expect("renders")).expect("utf-8 roff");
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains(".TH falconeri 1"), "{page}");
        for command in visible_commands() {
            assert!(
                page.contains(&format!("falconeri\\-{command}(1)")),
                "the page does not list `{command}`:\n{page}"
            );
        }
        assert!(!page.contains("internal"), "{page}");
    }

    #[test]
    fn pages_are_written_for_every_visible_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("man1");
        let pages = write_pages(&out).expect("writes");
        let names: Vec<String> = pages
            .iter()
            .map(|page| {
                page.strip_prefix(&out)
                    .expect("in the directory")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        for name in [
            "falconeri.1",
            "falconeri-job.1",
            "falconeri-job-run.1",
            "falconeri-datum-describe.1",
            "falconeri-completions.1",
            "falconeri-man.1",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("internal")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        // A subcommand's page documents its own flags and the global ones.
        let run = std::fs::read_to_string(out.join("falconeri-job-run.1")).expect("page");
        assert!(run.contains("\\-\\-wait"), "{run}");
        assert!(run.contains("FALCONERI_SERVER"), "{run}");
    }
}
