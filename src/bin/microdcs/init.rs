//! `microdcs init PATH [--name NAME]`: a new plant application, the way
//! `cargo new` creates a crate.
//!
//! The files come from `templates/init/` in this repository (embedded at
//! build time), with a few placeholders replaced: `{{name}}` (the package
//! name), `{{crate_name}}` (the name as a Rust identifier, `-` → `_`),
//! `{{microdcs_source}}` and `{{codegen_source}}` (the dependency
//! specifications of `microdcs` and `microdcs-codegen`: a `path` or a
//! `version`).

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Create a plant application: a crate with a station, an example processor and a recipe
///
/// Creates PATH (or fills it when it is an empty directory) with a crate
/// named NAME that depends on microdcs: `build.rs` generating types from
/// its `schemas/` with microdcs-codegen, a station with job management and
/// one example processor (`src/`), an SFC recipe (`recipes/`), a test
/// against local Mosquitto and Redis (`tests/`), a kustomize base
/// (`deploy/`), a `Dockerfile` and a README with its two commands. For example:
///   microdcs init press-line
///   microdcs init plants/axle --name axle-station --microdcs-path ~/src/microdcs
///
/// Exit code: 0 created, 1 refused (non-empty directory, bad name, ...).
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// The directory to create (or an empty existing one).
    #[arg(value_name = "PATH")]
    pub(crate) path: PathBuf,
    /// The app's name: package, Kubernetes objects and image (lowercase
    /// letters, digits, '-') [default: the directory's name].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Depend on the microdcs checkout in DIR (path dependencies; for
    /// working against a checkout, as CI does).
    #[arg(long, value_name = "DIR", conflicts_with = "microdcs_version")]
    pub(crate) microdcs_path: Option<PathBuf>,
    /// Depend on this version of microdcs and microdcs-codegen from the
    /// registry [default: this binary's version].
    #[arg(long, value_name = "V")]
    pub(crate) microdcs_version: Option<String>,
}

/// Where an application file comes from: its path in the application
/// (placeholders allowed) and the template's text.
struct Template {
    path: &'static str,
    text: &'static str,
}

/// Embeds `templates/init/{file}` as the application's `path` (by default
/// the same path).
macro_rules! template {
    ($path:literal) => {
        template!($path, $path)
    };
    ($path:literal, $file:literal) => {
        Template {
            path: $path,
            text: include_str!(concat!("../../../templates/init/", $file)),
        }
    };
}

/// Every file of a new application.
const TEMPLATES: &[Template] = &[
    // Not named Cargo.toml / .gitignore / .dockerignore in the repository,
    // so that neither cargo, git nor docker treats them as this repository's.
    template!("Cargo.toml", "Cargo.toml.tmpl"),
    template!(".gitignore", "gitignore"),
    template!(".dockerignore", "dockerignore"),
    template!("README.md"),
    template!("Dockerfile"),
    template!("build.rs"),
    template!("schemas/inspection.schema.json"),
    template!("src/lib.rs"),
    template!("src/main.rs"),
    template!("src/inspection.rs"),
    template!("recipes/inspect-part.json"),
    template!("tests/station.rs"),
    template!("deploy/base/kustomization.yaml"),
    template!("deploy/base/statefulset.yaml"),
    template!("deploy/base/services.yaml"),
    template!("deploy/base/pdb.yaml"),
    template!("deploy/base/{{name}}.toml", "deploy/base/station.toml"),
];

/// Names cargo refuses or that would clash with the application's own
/// dependencies or Rust's built-in crates (compared with `-` as `_`):
/// Rust's keywords (strict and reserved), built-in crates and cargo's
/// directory names, the application's dependencies.
const RESERVED: &str = "\
    as async await break const continue crate dyn else enum extern false fn for if impl in \
    let loop match mod move mut pub ref return self static struct super trait true type \
    unsafe use where while abstract become box do final gen macro override priv try typeof \
    unsized virtual yield \
    std core alloc proc_macro test build deps examples incremental \
    microdcs microdcs_codegen tokio serde serde_json tracing";

/// Why `init` refused; the message says what to do.
#[derive(Debug)]
pub(crate) enum InitError {
    /// NAME is not usable as a package name.
    BadName { name: String, reason: String },
    /// No NAME given and PATH has no usable last component.
    NoName(PathBuf),
    /// PATH exists and is not an empty directory.
    NotEmpty(PathBuf),
    /// `--microdcs-path` is not a microdcs checkout.
    NotACheckout { dir: PathBuf, reason: String },
    /// `--microdcs-version` is not a version requirement.
    BadVersion(String),
    /// Reading or writing a file failed.
    Io { path: PathBuf, error: io::Error },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::BadName { name, reason } => {
                write!(f, "{name:?} is not a valid package name: {reason}")?;
                write!(f, " (choose another with --name NAME)")
            }
            InitError::NoName(path) => write!(
                f,
                "cannot take a package name from {}; give one with --name NAME",
                path.display()
            ),
            InitError::NotEmpty(path) => write!(
                f,
                "{} already exists and is not an empty directory; choose a new PATH",
                path.display()
            ),
            InitError::NotACheckout { dir, reason } => write!(
                f,
                "--microdcs-path {}: not a microdcs checkout ({reason})",
                dir.display()
            ),
            InitError::BadVersion(v) => write!(
                f,
                "--microdcs-version {v:?}: not a version requirement (e.g. 0.1.0 or ^0.1)"
            ),
            InitError::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for InitError {}

/// What was created.
#[derive(Debug)]
pub(crate) struct Created {
    /// The package name.
    pub(crate) name: String,
    /// The application's directory, as given.
    pub(crate) dir: PathBuf,
    /// The files written, relative to `dir`.
    pub(crate) files: Vec<String>,
}

/// `init PATH`: creates the application and prints its two commands.
pub(crate) fn init(args: &Args) -> ExitCode {
    match create(args) {
        Ok(created) => {
            let dir = created.dir.display();
            super::out(&format!(
                "Created plant app `{}` in {dir} ({} files).\n\n\
                 Run it against your broker and Redis:\n  \
                 cd {dir} && APP_MQTT_HOSTNAME=localhost APP_REDIS_HOSTNAME=localhost cargo run\n\
                 Test it (starts mosquitto and redis-server from PATH):\n  \
                 cd {dir} && cargo test\n",
                created.name,
                created.files.len()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the application `args` describe.
///
/// # Errors
///
/// See [`InitError`]; nothing is written unless the name, the dependency
/// and the directory are all acceptable, and a failed write removes what
/// was written before it.
pub(crate) fn create(args: &Args) -> Result<Created, InitError> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(&args.path)?,
    };
    validate_name(&name)?;
    let (microdcs, codegen) = dependencies(args)?;
    prepare_dir(&args.path)?;
    let crate_name = name.replace('-', "_");
    let render = |text: &str| {
        text.replace("{{name}}", &name)
            .replace("{{crate_name}}", &crate_name)
            .replace("{{microdcs_source}}", &microdcs)
            .replace("{{codegen_source}}", &codegen)
    };
    let rendered: Vec<(String, String)> = TEMPLATES
        .iter()
        .map(|t| (render(t.path), render(t.text)))
        .collect();
    let files = write_or_undo(&args.path, &rendered, write_new)?;
    Ok(Created {
        name,
        dir: args.path.clone(),
        files,
    })
}

/// The last component of `path` (made absolute, so `.` names the current
/// directory).
fn default_name(path: &Path) -> Result<String, InitError> {
    let absolute = std::path::absolute(path).map_err(|error| InitError::Io {
        path: path.to_owned(),
        error,
    })?;
    absolute
        .components()
        .next_back()
        .and_then(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| InitError::NoName(path.to_owned()))
}

/// Cargo's rules for a package name, stricter where it helps: ASCII
/// letters, digits, `-` and `_`, starting with a letter, at most 64
/// characters, not a keyword, a built-in crate or one of the application's
/// dependencies.
/// The longest app name: a StatefulSet's name plus the 11 characters of its
/// pods' `controller-revision-hash` label must fit a 63-character label.
const MAX_NAME: usize = 52;

fn validate_name(name: &str) -> Result<(), InitError> {
    let bad = |reason: &str| {
        Err(InitError::BadName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let Some(first) = name.chars().next() else {
        return bad("it is empty");
    };
    // The name is the package's and also the Kubernetes objects' and the
    // image's: an RFC 1123 label, which is also a valid package name.
    if !first.is_ascii_lowercase() {
        return bad("it must start with a lowercase ASCII letter");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(&format!(
            "{c:?} is not allowed (only lowercase ASCII letters, digits and '-': \
             the name is also the Kubernetes objects' and the image's)"
        ));
    }
    if name.ends_with('-') {
        return bad("it must not end with '-' (a Kubernetes name)");
    }
    if name.len() > MAX_NAME {
        return bad(&format!(
            "it is longer than {MAX_NAME} characters (the StatefulSet's pods and \
             its headless Service must stay valid Kubernetes names)"
        ));
    }
    let underscored = name.replace('-', "_");
    if RESERVED.split_whitespace().any(|r| r == underscored) {
        return bad("it is a Rust keyword, a built-in crate or a dependency of the app");
    }
    Ok(())
}

/// The dependency specifications (inside `{ … }`) of `microdcs` and
/// `microdcs-codegen`.
fn dependencies(args: &Args) -> Result<(String, String), InitError> {
    if let Some(dir) = &args.microdcs_path {
        let not = |reason: String| InitError::NotACheckout {
            dir: dir.clone(),
            reason,
        };
        let root = dir
            .canonicalize()
            .map_err(|e| not(format!("cannot open it: {e}")))?;
        let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
            .map_err(|e| not(format!("no readable Cargo.toml: {e}")))?;
        if !manifest.contains("name = \"microdcs\"") {
            return Err(not("its Cargo.toml is not the microdcs package".into()));
        }
        let codegen = root.join("codegen");
        if !codegen.join("Cargo.toml").is_file() {
            return Err(not("it has no codegen/Cargo.toml".into()));
        }
        let path = |p: &Path| -> Result<String, InitError> {
            p.to_str()
                .map(|s| format!("path = {}", toml_string(s)))
                .ok_or_else(|| not("its path is not UTF-8".into()))
        };
        return Ok((path(&root)?, path(&codegen)?));
    }
    let version = args
        .microdcs_version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-+^~=<>*, ".contains(c);
    if version.trim().is_empty()
        || !version.starts_with(|c: char| c.is_ascii_digit() || "^~=<>".contains(c))
        || !version.chars().all(allowed)
    {
        return Err(InitError::BadVersion(version));
    }
    let spec = format!("version = {}", toml_string(&version));
    Ok((spec.clone(), spec))
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `files` (relative path, text) under `dir` with `write`; when one
/// fails, removes what was written (and the directories made for it), so a
/// failed `init` leaves `dir` empty as it found it. The relative paths
/// written, in order.
fn write_or_undo(
    dir: &Path,
    files: &[(String, String)],
    mut write: impl FnMut(&Path, &str) -> Result<(), InitError>,
) -> Result<Vec<String>, InitError> {
    let mut written = Vec::with_capacity(files.len());
    for (relative, text) in files {
        if let Err(e) = write(&dir.join(relative), text) {
            // The directory was empty (or new) before: clear it again.
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
            return Err(e);
        }
        written.push(relative.clone());
    }
    Ok(written)
}

/// Creates `dir`, or accepts it when it is an empty directory.
fn prepare_dir(dir: &Path) -> Result<(), InitError> {
    let io = |error| InitError::Io {
        path: dir.to_owned(),
        error,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if std::fs::read_dir(dir).map_err(io)?.next().is_some() {
                return Err(InitError::NotEmpty(dir.to_owned()));
            }
            Ok(())
        }
        Ok(_) => Err(InitError::NotEmpty(dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(dir).map_err(io),
        Err(e) => Err(io(e)),
    }
}

/// Writes a new file (never overwrites), creating its directory.
fn write_new(path: &Path, text: &str) -> Result<(), InitError> {
    let io = |error| InitError::Io {
        path: path.to_owned(),
        error,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(path: &Path) -> Args {
        Args {
            path: path.to_owned(),
            name: None,
            microdcs_path: None,
            microdcs_version: None,
        }
    }

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn init_creates_a_complete_app_named_after_its_directory() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("press-line");
        let mut a = args(&dir);
        a.microdcs_path = Some(repo());
        let created = create(&a).expect("created");
        assert_eq!(created.name, "press-line");
        for file in [
            "Cargo.toml",
            ".gitignore",
            ".dockerignore",
            "README.md",
            "Dockerfile",
            "build.rs",
            "schemas/inspection.schema.json",
            "src/lib.rs",
            "src/main.rs",
            "src/inspection.rs",
            "recipes/inspect-part.json",
            "tests/station.rs",
            "deploy/base/kustomization.yaml",
            "deploy/base/statefulset.yaml",
            "deploy/base/press-line.toml",
        ] {
            assert!(dir.join(file).is_file(), "{file} missing");
            assert!(created.files.iter().any(|f| f == file), "{file} not listed");
        }
        assert_eq!(created.files.len(), TEMPLATES.len());
        // Every placeholder replaced, in every file.
        for file in &created.files {
            let text = read(&dir.join(file));
            assert!(!text.contains("{{"), "{file} keeps a placeholder");
        }
        let manifest = read(&dir.join("Cargo.toml"));
        assert!(manifest.contains("name = \"press-line\""), "{manifest}");
        let root = repo().canonicalize().expect("repo");
        let microdcs = format!(
            "microdcs = {{ path = \"{}\", default-features = false, features = [\"tls\"] }}",
            root.display()
        );
        assert!(manifest.contains(&microdcs), "{manifest}");
        let codegen = format!("path = \"{}\" }}", root.join("codegen").display());
        assert!(manifest.contains(&codegen), "{manifest}");
        assert!(read(&dir.join("src/main.rs")).contains("\nuse press_line::build;\n"));
        assert!(read(&dir.join("tests/station.rs")).contains("\nuse press_line as app;\n"));
        assert!(read(&dir.join("README.md")).starts_with("# press-line\n\n```sh\n"));
        assert!(read(&dir.join("deploy/base/statefulset.yaml")).contains("name: press-line\n"));
        // The recipe is one the station accepts; the schema is JSON with
        // the app's CloudEvent type.
        let recipe = microdcs::sfc::source::load(&read(&dir.join("recipes/inspect-part.json")))
            .unwrap_or_else(|e| panic!("recipe refused: {e}"));
        assert_eq!(recipe.recipe.steps.len(), 4);
        let schema: serde_json::Value =
            serde_json::from_str(&read(&dir.join("schemas/inspection.schema.json")))
                .expect("schema JSON");
        assert_eq!(
            schema["$defs"]["CheckPartCall"]["x-cloudevent-type"],
            "com.example.press-line.CheckPart.v1"
        );
    }

    #[test]
    fn init_depends_on_this_version_by_default_and_takes_another() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mut a = args(&tmp.path().join("one"));
        create(&a).expect("created");
        let manifest = read(&tmp.path().join("one/Cargo.toml"));
        let spec = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
        for dependency in [
            format!("microdcs = {{ {spec}, default-features = false, features = [\"tls\"] }}"),
            format!("microdcs-codegen = {{ {spec} }}"),
            format!("microdcs = {{ {spec}, features = [\"testkit\", \"sim\"] }}"),
        ] {
            assert!(manifest.contains(&dependency), "{dependency} in {manifest}");
        }
        a.path = tmp.path().join("two");
        a.microdcs_version = Some("^0.2".into());
        create(&a).expect("created");
        assert!(read(&tmp.path().join("two/Cargo.toml")).contains("version = \"^0.2\""));
        for bad in ["", "latest", "0.1\"\n[x]", "../microdcs"] {
            a.path = tmp.path().join("bad");
            a.microdcs_version = Some(bad.into());
            assert!(
                matches!(create(&a), Err(InitError::BadVersion(_))),
                "{bad:?}"
            );
            assert!(!a.path.exists(), "{bad:?} created the directory");
        }
    }

    #[test]
    fn init_fills_an_empty_directory_and_refuses_a_non_empty_one() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        let mut a = args(&empty);
        a.name = Some("station".into());
        assert_eq!(create(&a).expect("created").name, "station");

        // Now it holds the app: a second init changes nothing.
        let before = read(&empty.join("Cargo.toml"));
        let e = create(&a).expect_err("refused");
        assert!(matches!(e, InitError::NotEmpty(_)), "{e:?}");
        assert!(e.to_string().contains("not an empty directory"), "{e}");
        assert_eq!(read(&empty.join("Cargo.toml")), before);

        // A directory with one stray file, and a plain file.
        let stray = tmp.path().join("stray");
        std::fs::create_dir(&stray).expect("mkdir");
        std::fs::write(stray.join("notes.txt"), "mine").expect("write");
        assert!(matches!(create(&args(&stray)), Err(InitError::NotEmpty(_))));
        assert_eq!(
            std::fs::read_dir(&stray).expect("dir").count(),
            1,
            "files added"
        );
        let file = tmp.path().join("file");
        std::fs::write(&file, "").expect("write");
        assert!(matches!(create(&args(&file)), Err(InitError::NotEmpty(_))));
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("app");
        for bad in [
            "",
            "1line",
            "-line",
            "press line",
            "press/line",
            "préss",
            "fn",
            "test",
            "std",
            "microdcs",
            "microdcs-codegen",
            "Press",
            "line_2",
            "line-",
            &"a".repeat(MAX_NAME + 1),
        ] {
            let mut a = args(&dir);
            a.name = Some(bad.to_owned());
            let e = create(&a).expect_err(bad);
            assert!(matches!(e, InitError::BadName { .. }), "{bad:?}: {e:?}");
            assert!(e.to_string().contains("--name"), "{e}");
            assert!(!dir.exists(), "{bad:?} created the directory");
        }
        // A directory whose name is no package name needs --name.
        let e = create(&args(&tmp.path().join("2024 line"))).expect_err("refused");
        assert!(matches!(e, InitError::BadName { .. }), "{e:?}");
        let mut a = args(&tmp.path().join("2024 line"));
        a.name = Some("line-2024".into());
        assert_eq!(create(&a).expect("created").name, "line-2024");
        for good in ["a", "press-line-2", "line2", &"a".repeat(MAX_NAME)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_microdcs_path_must_be_a_checkout() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mut a = args(&tmp.path().join("app"));
        a.microdcs_path = Some(tmp.path().join("nowhere"));
        let e = create(&a).expect_err("refused");
        assert!(
            e.to_string()
                .contains("not a microdcs checkout (cannot open it"),
            "{e}"
        );
        a.microdcs_path = Some(repo().join("codegen"));
        let e = create(&a).expect_err("refused");
        assert!(matches!(e, InitError::NotACheckout { .. }), "{e:?}");
        assert!(!tmp.path().join("app").exists());
    }

    #[test]
    fn a_failed_write_leaves_the_directory_empty() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let files: Vec<(String, String)> = ["a.txt", "src/b.rs", "deploy/base/c.yaml"]
            .iter()
            .map(|p| ((*p).to_owned(), "text".to_owned()))
            .collect();
        let mut calls = 0;
        let e = write_or_undo(tmp.path(), &files, |path, text| {
            calls += 1;
            if calls == 3 {
                return Err(InitError::Io {
                    path: path.to_owned(),
                    error: io::Error::other("disk full"),
                });
            }
            write_new(path, text)
        })
        .expect_err("the third write fails");
        assert!(e.to_string().ends_with("c.yaml: disk full"), "{e}");
        assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 0);
        // Without a failure every file is written.
        let written = write_or_undo(tmp.path(), &files, write_new).expect("written");
        assert_eq!(written, ["a.txt", "src/b.rs", "deploy/base/c.yaml"]);
        assert!(tmp.path().join("deploy/base/c.yaml").is_file());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"C:\a "b""#), r#""C:\\a \"b\"""#);
        assert_eq!(toml_string("a\nb"), "\"a\\u000Ab\"");
    }
}
