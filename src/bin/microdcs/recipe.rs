//! `microdcs recipe check` and `microdcs recipe graph`: a recipe file read
//! by the library's rule (`microdcs::sfc::source`), the same the station
//! stores and runs work masters by.

use microdcs::sfc::recipe::Recipe;
use microdcs::sfc::source::{self, LoadError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Validate an SFC recipe (or a work master carrying one), list every problem
///
/// Validates an SFC recipe as a work master's recipe is validated before it
/// is stored: the schema, one initial step, unique names, references,
/// reachability, branch structure, conditions (CEL), qualifier times and
/// TypeIds. Prints `OK: <counts>` on stdout, or every problem with its
/// location (e.g. `Transitions[3].Condition`) on stderr.
///
/// Exit code: 0 valid, 1 invalid or unreadable.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::RECIPE_FILE)]
pub(crate) struct CheckArgs {
    /// The recipe or work master (JSON); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

/// Print an SFC recipe as a Mermaid flowchart
///
/// Prints the recipe as a Mermaid flowchart (`flowchart TD`): steps with
/// their actions, transitions labelled with their conditions, branches as
/// subgraphs between fork and join nodes. Paste it into a ```mermaid block.
///
/// Exit code: 0 printed, 1 the recipe is invalid (problems on stderr).
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::RECIPE_FILE)]
pub(crate) struct GraphArgs {
    /// The recipe or work master (JSON); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
}

/// `recipe check FILE`.
pub(crate) fn check(args: &CheckArgs) -> ExitCode {
    match load(&args.file) {
        Ok(recipe) => {
            super::out(&format!(
                "OK: {} steps, {} transitions, {} actions, {} branches\n",
                recipe.steps.len(),
                recipe.transitions.len(),
                recipe.actions.len(),
                recipe.branches.len()
            ));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `recipe graph FILE`.
pub(crate) fn graph(args: &GraphArgs) -> ExitCode {
    match load(&args.file) {
        Ok(recipe) => {
            super::out(&microdcs::sfc::graph::mermaid(&recipe));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Reads the file (`-`: standard input) and loads its recipe; on failure
/// prints every problem to stderr.
fn load(path: &Path) -> Result<Recipe, ExitCode> {
    let shown = path.display();
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    let text = text.map_err(|e| {
        eprintln!("error: cannot read {shown}: {e}");
        ExitCode::FAILURE
    })?;
    source::load(&text)
        .map(|loaded| loaded.recipe)
        .map_err(|e| {
            eprint!("{}", report(&shown.to_string(), &e));
            ExitCode::FAILURE
        })
}

/// `error: FILE: what (N problems):` and one indented line per problem.
fn report(shown: &str, error: &LoadError) -> String {
    let problems = error.problems();
    let n = problems.len();
    let noun = if n == 1 { "problem" } else { "problems" };
    let mut text = format!("error: {shown}: {error} ({n} {noun}):\n");
    for p in problems {
        text.push_str(&format!("  {}: {}\n", p.location, p.message));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_lists_every_problem_under_its_summary() {
        let error = source::load("{\n  \"Steps\": [\n}").expect_err("not JSON");
        let text = report("bad.json", &error);
        assert!(
            text.starts_with(
                "error: bad.json: not JSON (1 problem):\n  line 3, column 1: not valid JSON"
            ),
            "{text}"
        );
    }
}
