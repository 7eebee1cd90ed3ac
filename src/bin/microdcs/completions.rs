//! `microdcs completions SHELL`: a completion script for the shell, generated
//! from the command line's own definition (so it never lags behind it).

use clap::CommandFactory;
use std::process::ExitCode;

/// Print a shell completion script
///
/// Writes the completion script for SHELL to stdout. For example:
///   microdcs completions bash > /etc/bash_completion.d/microdcs
///   microdcs completions zsh > "${fpath[1]}/_microdcs"
///   microdcs completions fish > ~/.config/fish/completions/microdcs.fish
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The shell: bash, elvish, fish, powershell or zsh.
    #[arg(value_enum, value_name = "SHELL")]
    pub(crate) shell: clap_complete::Shell,
}

/// Writes the script to stdout.
pub(crate) fn completions(args: &Args) -> ExitCode {
    let mut out = Vec::new();
    script(args.shell, &mut out);
    super::out(&String::from_utf8_lossy(&out));
    ExitCode::SUCCESS
}

/// The completion script for `shell`.
pub(crate) fn script(shell: clap_complete::Shell, out: &mut Vec<u8>) {
    clap_complete::generate(shell, &mut super::Cli::command(), "microdcs", out);
}
