//! Configuration errors: every problem names the key or variable at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key of the configuration file.
    File {
        /// Dotted key path, e.g. `mqtt.port` or
        /// `processors.machinery-jobs.prefix`.
        key: String,
        /// The file, when it was read from one.
        path: Option<PathBuf>,
    },
    /// An environment variable.
    Env {
        /// Its name, e.g. `APP_MQTT_PORT`.
        var: String,
    },
}

impl Origin {
    pub(super) fn file(key: impl Into<String>, path: Option<&Path>) -> Self {
        Origin::File {
            key: key.into(),
            path: path.map(Path::to_path_buf),
        }
    }

    pub(super) fn env(var: impl Into<String>) -> Self {
        Origin::Env { var: var.into() }
    }

    /// The environment variable's name, if the value came from one.
    pub fn env_var(&self) -> Option<&str> {
        match self {
            Origin::Env { var } => Some(var),
            Origin::File { .. } => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                key,
                path: Some(path),
            } => write!(f, "`{key}` in {}", path.display()),
            Origin::File { key, path: None } => write!(f, "`{key}` in the configuration file"),
            Origin::Env { var } => write!(f, "environment variable `{var}`"),
        }
    }
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key or variable at fault.
    pub origin: Origin,
    /// What is wrong with it and what is expected instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Why a configuration could not be loaded. The process should not start:
/// fix the named settings and try again (`microdcs config check` shows the
/// result without starting anything).
///
/// `{:?}` prints the same readable message as `{}` (what a `main` returning
/// `Result<(), Box<dyn Error>>` shows on failure); `{:#?}` shows the
/// structure.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("{} is not valid TOML: {message}", describe_file(path.as_ref()))]
    Syntax {
        /// The file, when it was read from one.
        path: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Settings are invalid; all problems found are listed.
    #[error("{}", list(problems))]
    Invalid {
        /// Every invalid setting, file problems first, then environment
        /// problems, then inconsistencies between settings.
        problems: Vec<Problem>,
    },
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        match self {
            ConfigError::Read { path, source } => f
                .debug_struct("Read")
                .field("path", path)
                .field("source", source)
                .finish(),
            ConfigError::Syntax { path, message } => f
                .debug_struct("Syntax")
                .field("path", path)
                .field("message", message)
                .finish(),
            ConfigError::Invalid { problems } => f
                .debug_struct("Invalid")
                .field("problems", problems)
                .finish(),
        }
    }
}

impl ConfigError {
    /// The invalid settings (empty for unreadable or unparsable files).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn describe_file(path: Option<&PathBuf>) -> String {
    match path {
        Some(p) => format!("configuration file {}", p.display()),
        None => "the configuration file".into(),
    }
}

fn list(problems: &[Problem]) -> String {
    match problems {
        [one] => format!("invalid configuration: {one}"),
        many => {
            let mut s = format!("invalid configuration ({} problems):", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_the_readable_message() {
        let e = ConfigError::Invalid {
            problems: vec![Problem {
                origin: Origin::env("APP_MQTT_PORT"),
                message: "invalid port".into(),
            }],
        };
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(
            format!("{boxed:?}"),
            "invalid configuration: environment variable `APP_MQTT_PORT`: invalid port"
        );
        assert!(format!("{boxed:#?}").contains("Invalid"));
    }
}
