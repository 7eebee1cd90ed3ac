//! Where a recipe comes from: the one rule that says whether a work master
//! carries an SFC recipe, and reading a recipe out of a JSON document that
//! is either the recipe itself or a work master carrying it.
//!
//! # The rule
//!
//! A work master carries an SFC recipe in its `data` exactly when its
//! `dataschema` is [`RECIPE_SCHEMA`], character for character (wire
//! contract §5). No trailing-slash or case leniency: the job processor
//! validates a work master's recipe before storing it, and the engine runs
//! it, under this same rule, so a check that accepted more than the rule
//! would bless work masters the station stores unvalidated and never runs.
//! [`is_misspelt_recipe_schema`] finds the near misses, to warn about them.
//!
//! # Example
//!
//! ```
//! use microdcs::sfc::source::{self, RecipeSource, RECIPE_SCHEMA};
//!
//! let recipe = r#"{"Steps": [{"Name": "s", "Initial": true}], "Transitions": [], "Actions": []}"#;
//! let work_master = format!(r#"{{"ID": "WM-1", "dataschema": "{RECIPE_SCHEMA}", "data": {recipe}}}"#);
//!
//! let loaded = source::load(&work_master)?;
//! assert_eq!(loaded.source, RecipeSource::WorkMaster { id: Some("WM-1".into()) });
//! assert_eq!(loaded.recipe.steps.len(), 1);
//!
//! // Without the final `/` the station would store the work master
//! // unvalidated and never run it: not a recipe.
//! let misspelt = work_master.replace("v1.0.0/", "v1.0.0");
//! assert!(source::load(&misspelt).is_err());
//! # Ok::<(), microdcs::sfc::source::LoadError>(())
//! ```

use super::recipe::{Recipe, RecipeError, RecipeErrors};
use serde_json::Value;

/// The `dataschema` of work masters whose `data` is an SFC recipe: the
/// `$id` of `schemas/sfc-recipe.schema.json`.
pub const RECIPE_SCHEMA: &str = crate::models::sfc_recipe::SCHEMA_ID;

/// Whether a work master with this `dataschema` carries an SFC recipe in its
/// `data`: `dataschema` is exactly [`RECIPE_SCHEMA`]. A missing `dataschema`
/// is not.
#[must_use]
pub fn is_recipe_schema(dataschema: Option<&str>) -> bool {
    dataschema == Some(RECIPE_SCHEMA)
}

/// Whether a work master document (`{"ID": …, "dataschema": …, "data":
/// …}`, as stored) carries an SFC recipe: [`is_recipe_schema`] of its
/// `dataschema`.
#[must_use]
pub fn carries_recipe(work_master: &Value) -> bool {
    is_recipe_schema(work_master.get("dataschema").and_then(Value::as_str))
}

/// Whether `dataschema` is not [`RECIPE_SCHEMA`] but would be after adding
/// or removing a final `/`, or in another letter case: almost certainly
/// meant as the recipe schema, yet not run as one.
#[must_use]
pub fn is_misspelt_recipe_schema(dataschema: &str) -> bool {
    dataschema != RECIPE_SCHEMA
        && dataschema
            .trim_end_matches('/')
            .eq_ignore_ascii_case(RECIPE_SCHEMA.trim_end_matches('/'))
}

/// What a document held: the recipe itself, or a work master carrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipeSource {
    /// The document is the recipe (`{"Steps": …, "Transitions": …}`).
    Recipe,
    /// The document is a work master whose `data` is the recipe.
    WorkMaster {
        /// Its `ID` (or `id`), if it has one.
        id: Option<String>,
    },
}

impl RecipeSource {
    /// ` in work master 'ID'` (or ` in the work master's data`) for a work
    /// master, empty for a recipe: the suffix of a message about the recipe.
    fn suffix(&self) -> String {
        match self {
            RecipeSource::Recipe => String::new(),
            RecipeSource::WorkMaster { id: Some(id) } => format!(" in work master '{id}'"),
            RecipeSource::WorkMaster { id: None } => " in the work master's data".to_owned(),
        }
    }
}

/// A validated recipe and where in the document it was.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    /// The recipe, validated as before a work master is stored.
    pub recipe: Recipe,
    /// Whether it came alone or in a work master.
    pub source: RecipeSource,
}

/// Why a document gave no valid recipe. [`LoadError::problems`] lists each
/// problem with its location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The text is not JSON; the location is `line L, column C`.
    #[error("not JSON")]
    NotJson(RecipeError),
    /// A work master whose `data` is not an SFC recipe by the rule of
    /// [`is_recipe_schema`]; the location is `dataschema`.
    #[error("not an SFC recipe")]
    NotARecipe(RecipeError),
    /// The recipe breaks the schema or the rules of
    /// [`validate`](super::validate).
    #[error("invalid SFC recipe{}", origin.suffix())]
    Invalid {
        /// Whether it came alone or in a work master.
        origin: RecipeSource,
        /// Every problem found.
        errors: RecipeErrors,
    },
}

impl LoadError {
    /// Every problem, each with its location (never empty).
    #[must_use]
    pub fn problems(&self) -> &[RecipeError] {
        match self {
            LoadError::NotJson(e) | LoadError::NotARecipe(e) => std::slice::from_ref(e),
            LoadError::Invalid { errors, .. } => errors.errors(),
        }
    }
}

/// The recipe in `document`: a work master's `data` (a document with a
/// `data` member is a work master), else the document itself.
///
/// # Errors
///
/// [`LoadError::NotARecipe`] for a work master whose `dataschema` is not
/// [`RECIPE_SCHEMA`] (missing included): the station would store it without
/// validating its `data` and never run it.
pub fn recipe_of(document: &Value) -> Result<(&Value, RecipeSource), LoadError> {
    let Some(data) = document.get("data") else {
        return Ok((document, RecipeSource::Recipe));
    };
    let id = document
        .get("ID")
        .or_else(|| document.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let schema = document.get("dataschema").and_then(Value::as_str);
    if is_recipe_schema(schema) {
        return Ok((data, RecipeSource::WorkMaster { id }));
    }
    let message = match schema {
        None => format!(
            "the work master has no dataschema, so its data is not run as an SFC recipe; \
             set it to `{RECIPE_SCHEMA}`"
        ),
        Some(schema) if is_misspelt_recipe_schema(schema) => format!(
            "`{schema}` is not exactly the SFC recipe schema `{RECIPE_SCHEMA}`: the station \
             would store this work master without checking its recipe and never run it"
        ),
        Some(schema) => format!(
            "the work master's data follows `{schema}`, not the SFC recipe schema \
             `{RECIPE_SCHEMA}`"
        ),
    };
    Err(LoadError::NotARecipe(RecipeError::new(
        "dataschema",
        message,
    )))
}

/// Parses `text` as JSON, finds the recipe ([`recipe_of`]) and validates it
/// ([`Recipe::parse`]): what `microdcs recipe check` and `recipe graph` do
/// with a file.
///
/// # Errors
///
/// [`LoadError::NotJson`], [`LoadError::NotARecipe`] or
/// [`LoadError::Invalid`] with every problem of the recipe.
pub fn load(text: &str) -> Result<LoadedRecipe, LoadError> {
    let document: Value = serde_json::from_str(text).map_err(|e| {
        LoadError::NotJson(RecipeError::new(
            format!("line {}, column {}", e.line(), e.column()),
            format!("not valid JSON ({e})"),
        ))
    })?;
    let (data, source) = recipe_of(&document)?;
    match Recipe::parse(data) {
        Ok(recipe) => Ok(LoadedRecipe { recipe, source }),
        Err(errors) => Err(LoadError::Invalid {
            origin: source,
            errors,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recipe() -> Value {
        json!({
            "Steps": [{"Name": "start", "Initial": true}],
            "Transitions": [],
            "Actions": [],
        })
    }

    fn work_master(schema: Option<&str>) -> Value {
        let mut wm = json!({"ID": "WM-1", "data": recipe()});
        if let Some(schema) = schema {
            wm["dataschema"] = json!(schema);
        }
        wm
    }

    #[test]
    fn the_rule_is_the_schema_character_for_character() {
        assert!(is_recipe_schema(Some(RECIPE_SCHEMA)));
        assert!(carries_recipe(&work_master(Some(RECIPE_SCHEMA))));
        let no_slash = RECIPE_SCHEMA.trim_end_matches('/');
        for schema in [
            no_slash,
            &RECIPE_SCHEMA.to_uppercase(),
            &format!("{RECIPE_SCHEMA}/"),
        ] {
            assert!(!is_recipe_schema(Some(schema)), "{schema}");
            assert!(!carries_recipe(&work_master(Some(schema))), "{schema}");
            assert!(is_misspelt_recipe_schema(schema), "{schema}");
        }
        assert!(!is_recipe_schema(None));
        assert!(!carries_recipe(&work_master(None)));
        assert!(!carries_recipe(&json!({"dataschema": 7, "data": recipe()})));
        assert!(!is_misspelt_recipe_schema(RECIPE_SCHEMA));
        assert!(!is_misspelt_recipe_schema(
            "https://example.com/schemas/bpmn/v1/"
        ));
    }

    #[test]
    fn the_rule_is_the_generated_models_and_the_engines() {
        assert_eq!(
            <crate::models::sfc_recipe::SfcRecipe as crate::envelope::EventType>::DATASCHEMA,
            RECIPE_SCHEMA
        );
        assert_eq!(super::super::engine::SFC_RECIPE_SCHEMA, RECIPE_SCHEMA);
    }

    #[test]
    fn a_recipe_given_directly_is_loaded_as_itself() {
        let loaded = load(&recipe().to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.source, RecipeSource::Recipe);
        assert_eq!(loaded.recipe.steps.len(), 1);
    }

    #[test]
    fn a_work_master_with_the_recipe_schema_yields_its_data() {
        let text = work_master(Some(RECIPE_SCHEMA)).to_string();
        let loaded = load(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            loaded.source,
            RecipeSource::WorkMaster {
                id: Some("WM-1".into())
            }
        );
    }

    #[test]
    fn a_work_master_the_station_would_not_run_is_not_a_recipe() {
        let no_slash = RECIPE_SCHEMA.trim_end_matches('/');
        for (schema, words) in [
            (None, "no dataschema"),
            (Some(no_slash), "never run it"),
            (Some("https://example.com/schemas/bpmn/v1/"), "data follows"),
        ] {
            let err = load(&work_master(schema).to_string()).expect_err("not a recipe");
            assert!(matches!(err, LoadError::NotARecipe(_)), "{err:?}");
            let [problem] = err.problems() else {
                panic!("{err:?}")
            };
            assert_eq!(problem.location, "dataschema");
            assert!(problem.message.contains(words), "{problem}");
        }
    }

    #[test]
    fn problems_name_the_work_master_and_their_place() {
        let mut wm = work_master(Some(RECIPE_SCHEMA));
        wm["data"]["Steps"][0]["Initial"] = json!(false);
        let err = load(&wm.to_string()).expect_err("invalid");
        assert_eq!(err.to_string(), "invalid SFC recipe in work master 'WM-1'");
        assert!(err.problems().iter().any(|p| p.location == "Steps"));

        wm.as_object_mut().map(|o| o.remove("ID"));
        let err = load(&wm.to_string()).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid SFC recipe in the work master's data"
        );

        let err = load("{\n  \"Steps\": [\n}").expect_err("not JSON");
        assert_eq!(err.to_string(), "not JSON");
        assert_eq!(err.problems()[0].location, "line 3, column 1");
    }
}
