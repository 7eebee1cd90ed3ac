//! Names derived from model URIs, browse names and file names.
//!
//! The rules are documented in the crate docs ("Naming"); keep them in sync.

use heck::{ToPascalCase, ToShoutySnakeCase, ToSnakeCase};

/// Host and path segments of a model URI: `http://opcfoundation.org/UA/Machinery/Jobs/`
/// → (`opcfoundation.org`, [`UA`, `Machinery`, `Jobs`]).
pub(crate) fn uri_parts(uri: &str) -> (String, Vec<String>) {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let rest = rest.strip_prefix("urn:").unwrap_or(rest);
    let mut segments = rest.split('/').filter(|s| !s.is_empty()).map(str::to_owned);
    let host = segments.next().unwrap_or_default();
    (host, segments.collect())
}

/// Path segments without the leading `UA` that OPC Foundation URIs carry.
fn model_segments(uri: &str) -> Vec<String> {
    let (_, mut segments) = uri_parts(uri);
    if segments.first().is_some_and(|s| s == "UA") && segments.len() > 1 {
        segments.remove(0);
    }
    segments
}

/// Rust module of a NodeSet: the model URI's path without `UA` in
/// snake_case, without a trailing `_v<N>` (the version is in the docs):
/// `…/UA/ISA95-JOBCONTROL_V2/` → `isa95_jobcontrol`, `…/UA/Machinery/Jobs/` → `machinery_jobs`.
pub(crate) fn nodeset_module(uri: &str) -> String {
    let joined = model_segments(uri).join("_").to_snake_case();
    let trimmed = match joined.rsplit_once("_v") {
        Some((head, tail))
            if !head.is_empty() && !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) =>
        {
            head.to_owned()
        }
        _ => joined,
    };
    rust_ident(&trimmed)
}

/// Rust module of a hand-written schema file: the file stem without
/// `.schema`, in snake_case: `jobcontrol-config.schema.json` → `jobcontrol_config`.
pub(crate) fn schema_module(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".json").unwrap_or(file_name);
    let stem = stem.strip_suffix(".schema").unwrap_or(stem);
    rust_ident(&stem.to_snake_case())
}

/// CloudEvent `type` prefix of a model: the reversed host plus the path
/// segments without `UA`: `http://opcfoundation.org/UA/Machinery/Jobs/` →
/// `org.opcfoundation.Machinery.Jobs`.
pub(crate) fn cloudevent_prefix(uri: &str) -> String {
    let (host, _) = uri_parts(uri);
    let mut parts: Vec<String> = host.split('.').rev().map(str::to_owned).collect();
    parts.extend(model_segments(uri));
    parts.join(".")
}

/// Major version of a model version: `2.0.0` → `2`, `1.04.11` → `1`.
pub(crate) fn major_version(version: &str) -> String {
    let major = version.split('.').next().unwrap_or(version);
    let trimmed = major.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// `$id` of the JSON Schema generated for a model: base + URI path + `v<Version>/`.
pub(crate) fn schema_id(base: &str, uri: &str, version: &str) -> String {
    let (_, segments) = uri_parts(uri);
    let base = base.trim_end_matches('/');
    format!("{base}/{}/v{version}/", segments.join("/"))
}

/// SCREAMING_SNAKE const name of a browse name: `ISA95JobOrderDataType` → `ISA95_JOB_ORDER_DATA_TYPE`.
pub(crate) fn const_name(name: &str) -> String {
    let name = name.to_shouty_snake_case();
    let name = if name.starts_with(|c: char| c.is_ascii_digit()) || name.is_empty() {
        format!("N_{name}")
    } else {
        name
    };
    rust_ident(&name)
}

/// PascalCase prefix of a module, used when two documents define different
/// types under the same name: `machinery_jobs` → `MachineryJobs`.
pub(crate) fn type_prefix(module: &str) -> String {
    module.to_pascal_case()
}

/// The name typify gives a `$defs` key (mirrors `typify_impl::util::sanitize`).
pub(crate) fn typify_name(key: &str) -> String {
    let cleaned: String = key
        .replace('\'', "")
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = cleaned.to_pascal_case();
    let out = match out.chars().next() {
        None => "X".to_owned(),
        Some(c) if c.is_alphabetic() || c == '_' => out,
        Some(_) => format!("X{out}"),
    };
    if is_keyword(&out) {
        format!("{out}_")
    } else {
        out
    }
}

/// Whether `name` can be used as a Rust type name as is.
pub(crate) fn is_type_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric())
        && !is_keyword(name)
}

/// Makes `name` a valid identifier by appending `_` to keywords.
pub(crate) fn rust_ident(name: &str) -> String {
    if is_keyword(name) {
        format!("{name}_")
    } else {
        name.to_owned()
    }
}

fn is_keyword(name: &str) -> bool {
    matches!(
        name,
        "as" | "async"
            | "await"
            | "break"
            | "const"
            | "continue"
            | "crate"
            | "dyn"
            | "else"
            | "enum"
            | "extern"
            | "false"
            | "fn"
            | "for"
            | "gen"
            | "if"
            | "impl"
            | "in"
            | "let"
            | "loop"
            | "match"
            | "mod"
            | "move"
            | "mut"
            | "pub"
            | "ref"
            | "return"
            | "self"
            | "Self"
            | "static"
            | "struct"
            | "super"
            | "trait"
            | "true"
            | "type"
            | "unsafe"
            | "use"
            | "where"
            | "while"
            | "abstract"
            | "become"
            | "box"
            | "do"
            | "final"
            | "macro"
            | "override"
            | "priv"
            | "typeof"
            | "unsized"
            | "virtual"
            | "yield"
            | "try"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISA95: &str = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/";
    const JOBS: &str = "http://opcfoundation.org/UA/Machinery/Jobs/";

    #[test]
    fn modules_follow_the_model_uri() {
        assert_eq!(nodeset_module(ISA95), "isa95_jobcontrol");
        assert_eq!(nodeset_module(JOBS), "machinery_jobs");
        assert_eq!(
            schema_module("jobcontrol-config.schema.json"),
            "jobcontrol_config"
        );
        assert_eq!(schema_module("sfc_recipe.json"), "sfc_recipe");
    }

    #[test]
    fn cloudevent_types_and_schema_ids_match_the_wire_contract() {
        assert_eq!(
            cloudevent_prefix(ISA95),
            "org.opcfoundation.ISA95-JOBCONTROL_V2"
        );
        assert_eq!(cloudevent_prefix(JOBS), "org.opcfoundation.Machinery.Jobs");
        assert_eq!(major_version("2.0.0"), "2");
        assert_eq!(major_version("1.04.11"), "1");
        assert_eq!(
            schema_id("https://aschamberger.github.com/schemas/", ISA95, "2.0.0"),
            "https://aschamberger.github.com/schemas/UA/ISA95-JOBCONTROL_V2/v2.0.0/"
        );
        assert_eq!(
            schema_id("https://aschamberger.github.com/schemas", JOBS, "1.0.1"),
            "https://aschamberger.github.com/schemas/UA/Machinery/Jobs/v1.0.1/"
        );
    }

    #[test]
    fn const_names_are_screaming_snake_case() {
        assert_eq!(
            const_name("ISA95JobOrderDataType"),
            "ISA95_JOB_ORDER_DATA_TYPE"
        );
        assert_eq!(
            const_name("RequestJobResponseByJobOrderID"),
            "REQUEST_JOB_RESPONSE_BY_JOB_ORDER_ID"
        );
    }

    #[test]
    fn typify_names_are_predicted() {
        assert_eq!(
            typify_name("ISA95JobOrderDataType"),
            "Isa95JobOrderDataType"
        );
        assert_eq!(typify_name("StoreCall"), "StoreCall");
        assert!(is_type_ident("ISA95JobOrderDataType"));
        assert!(!is_type_ident("Self"));
    }
}
