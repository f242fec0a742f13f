//! Studies: a named set of runs over models × datasets × seeds × a grid of option values,
//! queued together (`POST /api/v1/studies`, the form at `/studies/new`, the demo study) and
//! followed and cancelled together.
//!
//! A [`StudyRequest`] expands into one [`RunRequest`] per cell of the cross product: the
//! `base` options, the grid's values for that cell, the seed, the model and the dataset. Each
//! goes through the same resolution as a single run; the study is stored only when every one
//! of them resolves, so a bad cell leaves nothing behind.

use crate::runs::RunRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Most runs one study may queue.
pub const MAX_RUNS: usize = 500;
/// Longest study name.
pub const MAX_NAME: usize = 200;
/// The run fields a study's lists set, which `base`, `per_model` and the grid may not.
const LISTED: [&str; 3] = ["model", "dataset", "seed"];

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// A request for a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "does the image help?", "models": ["bert-tiny", "clip-tiny"],
    "datasets": ["demo-news"], "seeds": [0, 1], "grid": {"learning_rate": [1e-4, 5e-4]},
    "base": {"epochs": 1}
}))]
pub struct StudyRequest {
    /// 1 to 200 characters (surrounding spaces aside).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// Models by name.
    #[schema(schema_with = names_schema)]
    pub models: Vec<String>,
    /// Datasets by name.
    #[schema(schema_with = names_schema)]
    pub datasets: Vec<String>,
    /// A run per seed in every cell; `[0]` if left out.
    #[serde(default = "default_seeds")]
    #[schema(schema_with = seeds_schema)]
    pub seeds: Vec<u64>,
    /// Options to vary: each name with its values; every combination is a cell.
    #[serde(default)]
    #[schema(schema_with = grid_schema)]
    pub grid: BTreeMap<String, Vec<Value>>,
    /// Options every run takes (those the grid does not set).
    #[serde(default)]
    #[schema(schema_with = options_schema)]
    pub base: Map<String, Value>,
    /// Options for the runs of one model, over `base` (a learning rate that suits it, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = per_model_schema)]
    pub per_model: BTreeMap<String, Map<String, Value>>,
}

/// The options a study's `base`, `per_model` and grid may set, with their schemas: a run's,
/// but those its lists set.
fn settable_options() -> impl Iterator<Item = (&'static str, utoipa::openapi::schema::Schema)> {
    crate::runs::request_option_schemas()
        .into_iter()
        .filter(|(name, _)| !LISTED.contains(name))
}

/// A list of at least one item, none twice (see [`distinct`]).
fn distinct_schema(item: utoipa::openapi::schema::Schema) -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::RefOr::T(item))
        .min_items(Some(1))
        .unique_items(true)
}

fn names_schema() -> utoipa::openapi::schema::Array {
    distinct_schema(
        utoipa::openapi::schema::Object::with_type(utoipa::openapi::schema::Type::String).into(),
    )
    .build()
}

fn seeds_schema() -> utoipa::openapi::schema::Array {
    let spec = crate::runs::RunRequest::spec("seed").expect("`seed` is an option");
    let seed = spec.schema(None, crate::runs::options::SchemaUse::Config);
    distinct_schema(seed)
        .default(serde_json::to_value(default_seeds()).ok())
        .build()
}

fn options_schema() -> utoipa::openapi::schema::Object {
    let usage = crate::runs::options::SchemaUse::Request;
    crate::runs::options::object_schema(settable_options().collect(), usage)
}

fn per_model_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder};
    ObjectBuilder::new()
        .additional_properties(Some(AdditionalProperties::RefOr(options_schema().into())))
        .build()
}

fn grid_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::ArrayBuilder;
    let usage = crate::runs::options::SchemaUse::Request;
    let lists = settable_options()
        .map(|(name, schema)| {
            (
                name,
                ArrayBuilder::new()
                    .items(utoipa::openapi::RefOr::T(schema))
                    .min_items(Some(1))
                    .build()
                    .into(),
            )
        })
        .collect();
    crate::runs::options::object_schema(lists, usage)
}

/// Why a study request cannot be queued; names the request field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StudyError {
    /// `models`, `seeds`, `grid.learning_rate`, `base`, ...
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> StudyError {
    StudyError {
        field: field.into(),
        message: message.into(),
    }
}

/// Names a list must hold: at least one, no repeats.
fn distinct<T: Ord + std::fmt::Debug>(field: &str, items: &[T]) -> Result<(), StudyError> {
    if items.is_empty() {
        return Err(invalid(field, format!("`{field}` must list at least one")));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = items.iter().find(|i| !seen.insert(*i)) {
        return Err(invalid(field, format!("`{field}` lists {dup:?} twice")));
    }
    Ok(())
}

/// Why a study was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitStudyError {
    /// The request, or one of its runs, is refused; names the study field at fault.
    #[error(transparent)]
    Invalid(#[from] StudyError),
    /// Something on the service's side.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StudyRequest {
    /// The study field behind a run's refusal: the model or dataset list, the grid's option,
    /// or `base.<option>`.
    pub fn field_of(&self, e: &crate::runs::SubmitError) -> String {
        match e.field() {
            Some("model") => "models".into(),
            Some("dataset") => "datasets".into(),
            Some("seed") => "seeds".into(),
            Some(f) if self.grid.contains_key(f) => format!("grid.{f}"),
            Some(f) if self.per_model.values().any(|o| o.contains_key(f)) => {
                match self.per_model.iter().find(|(_, o)| o.contains_key(f)) {
                    Some((m, _)) => format!("per_model.{m}"),
                    None => format!("base.{f}"),
                }
            }
            Some(f) => format!("base.{f}"),
            None => "base".into(),
        }
    }
}

/// One run of a study: its request and where it sits in the cross product.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub request: RunRequest,
    /// The grid's values of this run, by option name.
    pub grid: Map<String, Value>,
}

impl StudyRequest {
    /// How many runs the study makes.
    pub fn size(&self) -> usize {
        self.grid.values().map(Vec::len).fold(
            self.models.len() * self.datasets.len() * self.seeds.len(),
            |a, b| a.saturating_mul(b),
        )
    }

    /// Checks the request and expands it into its runs, models outermost, then datasets, grid
    /// combinations and seeds.
    pub fn expand(&self) -> Result<Vec<Cell>, StudyError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return Err(invalid(
                "name",
                format!("`name` must be 1 to {MAX_NAME} characters"),
            ));
        }
        distinct("models", &self.models)?;
        distinct("datasets", &self.datasets)?;
        distinct("seeds", &self.seeds)?;
        for key in LISTED {
            if self.base.contains_key(key) {
                return Err(invalid(
                    "base",
                    format!("`base` cannot set `{key}`: the study's `{key}s` list does"),
                ));
            }
            if self.grid.contains_key(key) {
                return Err(invalid(
                    format!("grid.{key}"),
                    format!("the grid cannot vary `{key}`: the study's `{key}s` list does"),
                ));
            }
        }
        for (model, options) in &self.per_model {
            if !self.models.contains(model) {
                return Err(invalid(
                    format!("per_model.{model}"),
                    format!("`per_model` names `{model}`, which is not in `models`"),
                ));
            }
            for key in options.keys() {
                if LISTED.contains(&key.as_str()) || self.grid.contains_key(key) {
                    return Err(invalid(
                        format!("per_model.{model}"),
                        format!("`per_model.{model}` cannot set `{key}`"),
                    ));
                }
            }
        }
        for (key, values) in &self.grid {
            if RunRequest::spec(key).is_none() {
                return Err(invalid(
                    format!("grid.{key}"),
                    format!("`{key}` is not a run option (options: {})", option_names()),
                ));
            }
            if values.is_empty() {
                return Err(invalid(
                    format!("grid.{key}"),
                    format!("the grid's `{key}` must list at least one value"),
                ));
            }
            if self.base.contains_key(key) {
                return Err(invalid(
                    format!("grid.{key}"),
                    format!("`{key}` is set both in `base` and in the grid"),
                ));
            }
        }
        let size = self.size();
        if size > MAX_RUNS {
            return Err(invalid(
                "grid",
                format!(
                    "the study would queue {size} runs ({} models × {} datasets × {} seeds × the grid); at most {MAX_RUNS}",
                    self.models.len(),
                    self.datasets.len(),
                    self.seeds.len()
                ),
            ));
        }
        let combos = self.grid.iter().fold(vec![Map::new()], |acc, (k, vs)| {
            acc.iter()
                .flat_map(|m| {
                    vs.iter().map(move |v| {
                        let mut m = m.clone();
                        m.insert(k.clone(), v.clone());
                        m
                    })
                })
                .collect()
        });
        let mut cells = Vec::with_capacity(size);
        for model in &self.models {
            for dataset in &self.datasets {
                for combo in &combos {
                    for &seed in &self.seeds {
                        let mut obj = self.base.clone();
                        if let Some(options) = self.per_model.get(model) {
                            obj.extend(options.clone());
                        }
                        obj.extend(combo.clone());
                        obj.insert("seed".into(), seed.into());
                        obj.insert("model".into(), model.clone().into());
                        obj.insert("dataset".into(), dataset.clone().into());
                        let request: RunRequest =
                            serde_path_to_error::deserialize(Value::Object(obj)).map_err(|e| {
                                let path = e.path().to_string();
                                let key = if path == "." {
                                    // an unknown field: its name is in the message
                                    let msg = e.inner().to_string();
                                    msg.split('`').nth(1).unwrap_or_default().to_string()
                                } else {
                                    path
                                };
                                let field = if self.grid.contains_key(&key) {
                                    format!("grid.{key}")
                                } else if self
                                    .per_model
                                    .get(model)
                                    .is_some_and(|o| o.contains_key(&key))
                                {
                                    format!("per_model.{model}")
                                } else {
                                    "base".to_string()
                                };
                                invalid(field, format!("`{key}`: {}", e.inner()))
                            })?;
                        cells.push(Cell {
                            request,
                            grid: combo.clone(),
                        });
                    }
                }
            }
        }
        Ok(cells)
    }
}

fn option_names() -> String {
    RunRequest::fields()
        .into_iter()
        .filter(|f| !LISTED.contains(f))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> StudyRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_study_expands_into_its_cross_product() {
        let s = req(
            json!({"name": "sweep", "models": ["a", "b"], "datasets": ["d"],
            "seeds": [0, 1, 2], "grid": {"learning_rate": [2e-5, 5e-5]}, "base": {"epochs": 2}}),
        );
        let cells = s.expand().unwrap();
        assert_eq!(cells.len(), 12);
        assert_eq!(s.size(), 12);
        let first = &cells[0].request;
        assert_eq!((first.model.as_str(), first.dataset.as_str()), ("a", "d"));
        assert_eq!(
            (
                first.train.seed,
                first.train.learning_rate,
                first.train.epochs
            ),
            (Some(0), Some(2e-5), Some(2))
        );
        assert_eq!(cells[3].request.train.learning_rate, Some(5e-5));
        assert_eq!(cells[6].request.model, "b");
        assert_eq!(cells[4].grid["learning_rate"], json!(5e-5));
        let s = req(json!({"name": "s", "models": ["a", "b"], "datasets": ["d"],
            "base": {"epochs": 2}, "per_model": {"b": {"epochs": 5, "learning_rate": 1e-3}}}));
        let cells = s.expand().unwrap();
        assert_eq!(cells[0].request.train.epochs, Some(2));
        assert_eq!(
            (
                cells[1].request.train.epochs,
                cells[1].request.train.learning_rate
            ),
            (Some(5), Some(1e-3))
        );
    }

    #[test]
    fn bad_studies_are_refused_naming_the_field() {
        let field = |v: Value| req(v).expand().unwrap_err().field;
        let base = json!({"name": "s", "models": ["a"], "datasets": ["d"]});
        let with = |extra: Value| {
            let mut b = base.clone();
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            b
        };
        assert_eq!(field(with(json!({"models": []}))), "models");
        assert_eq!(field(with(json!({"seeds": [1, 1]}))), "seeds");
        assert_eq!(field(with(json!({"grid": {"lr": [1]}}))), "grid.lr");
        assert_eq!(field(with(json!({"grid": {"seed": [1]}}))), "grid.seed");
        assert_eq!(field(with(json!({"grid": {"epochs": []}}))), "grid.epochs");
        assert_eq!(field(with(json!({"base": {"model": "x"}}))), "base");
        assert_eq!(field(with(json!({"base": {"epochs": "two"}}))), "base");
        assert_eq!(
            field(with(json!({"grid": {"epochs": ["two"]}}))),
            "grid.epochs"
        );
        assert_eq!(field(with(json!({"name": " "}))), "name");
        assert_eq!(
            field(with(json!({"per_model": {"zz": {}}}))),
            "per_model.zz"
        );
        assert_eq!(
            field(with(json!({"per_model": {"a": {"epochs": 0.5}}}))),
            "per_model.a"
        );
        let big = with(json!({"seeds": (0..100).collect::<Vec<u64>>(),
                              "grid": {"epochs": [1, 2, 3, 4, 5, 6]}}));
        let e = req(big).expand().unwrap_err();
        assert_eq!(e.field, "grid");
        assert!(e.message.contains("600 runs"), "{}", e.message);
    }
}
