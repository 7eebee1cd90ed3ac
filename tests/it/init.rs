//! `microdcs init` as a user runs it: the binary, its output and exit codes.
//! (What the files contain is checked by the binary's unit tests; that the
//! app builds and passes its own test, by `scripts/check-init.sh`.)

use std::path::Path;
use std::process::{Command, Output};

fn microdcs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run microdcs: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temporary path")
}

#[test]
fn init_creates_the_app_and_prints_its_two_commands() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let app = tmp.path().join("line-7");
    let out = microdcs(&[
        "init",
        arg(&app),
        "--microdcs-path",
        env!("CARGO_MANIFEST_DIR"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("Created plant app `line-7` in "),
        "{stdout}"
    );
    assert!(stdout.contains("cargo run"), "{stdout}");
    assert!(stdout.contains("cargo test"), "{stdout}");
    // The recipe it made is one `recipe check` accepts.
    let recipe = app.join("recipes/inspect-part.json");
    let check = microdcs(&["recipe", "check", arg(&recipe)]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).starts_with("OK: 4 steps"));
}

#[test]
fn init_refuses_with_exit_code_1_and_says_why() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    std::fs::write(tmp.path().join("notes.txt"), "mine").expect("write");
    let out = microdcs(&["init", arg(tmp.path()), "--name", "line"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("not an empty directory"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).expect("dir").count(),
        1,
        "files were added"
    );

    let out = microdcs(&["init", arg(&tmp.path().join("new")), "--name", "2fast"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"2fast\" is not a valid package name"),
        "{stderr}"
    );
    assert!(!tmp.path().join("new").exists());

    // No PATH: a usage error pointing at init's help.
    let out = microdcs(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("microdcs init --help"));
}
