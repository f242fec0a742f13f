//! MLflow's search grammar for runs and experiments: `filter` strings
//! (`metrics.accuracy > 0.9 and params.lr = '1e-3' and tags."mlflow.user" LIKE 'a%'`) and
//! `order_by` clauses (`metrics.accuracy DESC`), evaluated on loaded runs.

use crate::store::tracking::{Experiment, ExternalRun};
use std::cmp::Ordering;

/// What a clause compares: a metric's latest value, a parameter, a tag, or an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Entity {
    Metric(String),
    Param(String),
    Tag(String),
    Attribute(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    List(Vec<String>),
}

/// One `entity op value` clause; a filter is their conjunction.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub entity: Entity,
    pub op: Op,
    pub value: Value,
}

/// One `order_by` term.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderTerm {
    pub entity: Entity,
    pub ascending: bool,
}

/// Run attributes a filter or ordering can name.
const RUN_ATTRIBUTES: [&str; 7] = [
    "run_id",
    "run_name",
    "status",
    "user_id",
    "start_time",
    "end_time",
    "created",
];
/// Experiment attributes.
const EXPERIMENT_ATTRIBUTES: [&str; 4] =
    ["name", "experiment_id", "creation_time", "last_update_time"];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Quoted(String),
    Number(f64),
    Op(String),
    Comma,
    Open,
    Close,
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1
            }
            ')' => {
                out.push(Token::Close);
                i += 1
            }
            ',' => {
                out.push(Token::Comma);
                i += 1
            }
            '\'' | '"' | '`' => {
                let mut j = i + 1;
                let mut text = String::new();
                while j < chars.len() && chars[j] != c {
                    text.push(chars[j]);
                    j += 1;
                }
                if j == chars.len() {
                    return Err(format!("unterminated quote {c} in the filter"));
                }
                // a quoted key right after `entity.` belongs to the identifier before it
                match (c, out.last_mut()) {
                    ('"' | '`', Some(Token::Ident(id))) if id.ends_with('.') => id.push_str(&text),
                    ('`', _) => out.push(Token::Ident(text)),
                    _ => out.push(Token::Quoted(text)),
                }
                i = j + 1;
            }
            '=' | '!' | '<' | '>' => {
                let mut op = c.to_string();
                if i + 1 < chars.len() && chars[i + 1] == '=' {
                    op.push('=');
                    i += 1;
                }
                if op == "!" {
                    return Err("`!` must be followed by `=` in the filter".into());
                }
                out.push(Token::Op(op));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '.' | '-' | '+'))
                {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                let n = text
                    .parse::<f64>()
                    .map_err(|_| format!("`{text}` is not a number"))?;
                out.push(Token::Number(n));
                i = j;
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || matches!(chars[j], '_' | '.' | '-' | '/'))
                {
                    j += 1;
                }
                out.push(Token::Ident(chars[i..j].iter().collect()));
                i = j;
            }
            other => return Err(format!("unexpected character `{other}` in the filter")),
        }
    }
    Ok(out)
}

/// `metrics.x`, `params.x`, `tags.x`, `attributes.x` (and MLflow's aliases); a bare known
/// attribute name is an attribute.
fn entity(ident: &str, attributes: &[&str]) -> Result<Entity, String> {
    let (kind, key) = match ident.split_once('.') {
        Some((k, rest)) => (k.to_ascii_lowercase(), rest),
        None => (String::new(), ident),
    };
    if key.is_empty() {
        return Err(format!("`{ident}` names no key"));
    }
    let attribute = |key: &str| {
        if attributes.contains(&key) {
            Ok(Entity::Attribute(key.to_string()))
        } else {
            Err(format!(
                "unknown attribute `{key}`; known: {}",
                attributes.join(", ")
            ))
        }
    };
    match kind.as_str() {
        "metric" | "metrics" => Ok(Entity::Metric(key.into())),
        "param" | "params" | "parameter" | "parameters" => Ok(Entity::Param(key.into())),
        "tag" | "tags" => Ok(Entity::Tag(key.into())),
        "attribute" | "attributes" | "attr" | "run" => attribute(key),
        "" => attribute(key),
        other => Err(format!(
            "invalid entity type `{other}`: use metrics, params, tags or attributes"
        )),
    }
}

/// Parses a filter string; `attributes` are the names the searched kind has.
fn parse_filter(s: &str, attributes: &[&str]) -> Result<Vec<Clause>, String> {
    let toks = tokens(s)?;
    let mut clauses = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let Token::Ident(id) = &toks[i] else {
            return Err(format!(
                "expected a key such as metrics.accuracy, got {:?}",
                toks[i]
            ));
        };
        let entity = entity(id, attributes)?;
        i += 1;
        let op = match toks.get(i) {
            Some(Token::Op(o)) => match o.as_str() {
                "=" | "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                _ => return Err(format!("unknown comparator `{o}`")),
            },
            Some(Token::Ident(w)) => match w.to_ascii_uppercase().as_str() {
                "LIKE" => Op::Like,
                "ILIKE" => Op::ILike,
                "IN" => Op::In,
                "NOT" => match toks.get(i + 1) {
                    Some(Token::Ident(w2)) if w2.eq_ignore_ascii_case("IN") => {
                        i += 1;
                        Op::NotIn
                    }
                    _ => return Err("`NOT` must be followed by `IN`".into()),
                },
                _ => return Err(format!("unknown comparator `{w}`")),
            },
            _ => return Err(format!("expected a comparator after `{id}`")),
        };
        i += 1;
        let value = match (op, toks.get(i)) {
            (Op::In | Op::NotIn, Some(Token::Open)) => {
                let mut items = Vec::new();
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Token::Quoted(v)) => items.push(v.clone()),
                        Some(Token::Number(n)) => items.push(n.to_string()),
                        _ => return Err("IN takes a list of quoted values: ('a', 'b')".into()),
                    }
                    i += 1;
                    match toks.get(i) {
                        Some(Token::Comma) => i += 1,
                        Some(Token::Close) => break,
                        _ => return Err("unterminated IN list".into()),
                    }
                }
                Value::List(items)
            }
            (Op::In | Op::NotIn, _) => return Err("IN takes a parenthesised list".into()),
            (_, Some(Token::Quoted(v))) => Value::Text(v.clone()),
            (_, Some(Token::Number(n))) => Value::Number(*n),
            _ => return Err(format!("expected a value after the comparator of `{id}`")),
        };
        i += 1;
        check_clause(&entity, op, &value)?;
        clauses.push(Clause { entity, op, value });
        match toks.get(i) {
            None => break,
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            Some(t) => {
                return Err(format!(
                    "expected AND between clauses, got {t:?} (OR is not supported, as in MLflow)"
                ));
            }
        }
        if i == toks.len() {
            return Err("the filter ends with AND".into());
        }
    }
    Ok(clauses)
}

fn numeric_attribute(name: &str) -> bool {
    matches!(
        name,
        "start_time" | "end_time" | "created" | "creation_time" | "last_update_time"
    )
}

fn check_clause(entity: &Entity, op: Op, value: &Value) -> Result<(), String> {
    let numeric = match entity {
        Entity::Metric(_) => true,
        Entity::Attribute(a) => numeric_attribute(a),
        _ => false,
    };
    match (numeric, op, value) {
        (true, Op::Like | Op::ILike | Op::In | Op::NotIn, _) => Err(format!(
            "{entity:?} is numeric: compare it with =, !=, <, <=, >, >="
        )),
        (true, _, Value::Number(_)) => Ok(()),
        (true, _, _) => Err(format!("{entity:?} is numeric: compare it with a number")),
        (false, Op::Lt | Op::Le | Op::Gt | Op::Ge, _) => Err(format!(
            "{entity:?} is a string: compare it with =, !=, LIKE, ILIKE, IN"
        )),
        (false, Op::In | Op::NotIn, Value::List(_)) => Ok(()),
        (false, _, Value::Text(_)) => Ok(()),
        (false, _, _) => Err(format!("{entity:?} is a string: quote the value")),
    }
}

/// SQL LIKE: `%` any run of characters, `_` one character.
fn like(text: &str, pattern: &str, fold: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if fold {
        (
            text.to_lowercase().chars().collect(),
            pattern.to_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    // dynamic programming over (text position, pattern position)
    let mut reach = vec![false; t.len() + 1];
    reach[0] = true;
    for pc in &p {
        let mut next = vec![false; t.len() + 1];
        match pc {
            '%' => {
                let mut any = false;
                for k in 0..=t.len() {
                    any |= reach[k];
                    next[k] = any;
                }
            }
            _ => {
                for k in 0..t.len() {
                    if reach[k] && (*pc == '_' || *pc == t[k]) {
                        next[k + 1] = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[t.len()]
}

/// A value a clause is tested on.
enum Field<'a> {
    Number(f64),
    Text(&'a str),
    Owned(String),
}

fn test(field: Option<Field<'_>>, op: Op, value: &Value) -> bool {
    let Some(field) = field else { return false };
    match (field, value) {
        (Field::Number(x), Value::Number(y)) => match op {
            Op::Eq => x == *y,
            Op::Ne => x != *y,
            Op::Lt => x < *y,
            Op::Le => x <= *y,
            Op::Gt => x > *y,
            Op::Ge => x >= *y,
            _ => false,
        },
        (Field::Text(s), v) => test_text(s, op, v),
        (Field::Owned(s), v) => test_text(&s, op, v),
        _ => false,
    }
}

fn test_text(s: &str, op: Op, value: &Value) -> bool {
    match (op, value) {
        (Op::Eq, Value::Text(v)) => s == v,
        (Op::Ne, Value::Text(v)) => s != v,
        (Op::Like, Value::Text(v)) => like(s, v, false),
        (Op::ILike, Value::Text(v)) => like(s, v, true),
        (Op::In, Value::List(vs)) => vs.iter().any(|v| v == s),
        (Op::NotIn, Value::List(vs)) => !vs.iter().any(|v| v == s),
        _ => false,
    }
}

/// A run's value of an entity, as the filter and the ordering see it.
fn run_field<'a>(run: &'a ExternalRun, entity: &Entity) -> Option<Field<'a>> {
    match entity {
        Entity::Metric(k) => run
            .metrics
            .iter()
            .find(|m| &m.key == k)
            .map(|m| Field::Number(m.value)),
        Entity::Param(k) => run.params.get(k).map(|v| Field::Text(v)),
        Entity::Tag(k) => run.tags.get(k).map(|v| Field::Text(v)),
        Entity::Attribute(a) => match a.as_str() {
            "run_id" => Some(Field::Owned(run.id.to_string())),
            "run_name" => Some(Field::Text(&run.run_name)),
            "status" => Some(Field::Text(super::mlflow_status(run.status))),
            "user_id" => Some(Field::Text(&run.user_id)),
            "start_time" | "created" => run.start_time.map(|t| Field::Number(t as f64)),
            "end_time" => run.end_time.map(|t| Field::Number(t as f64)),
            _ => None,
        },
    }
}

fn experiment_field<'a>(e: &'a Experiment, entity: &Entity) -> Option<Field<'a>> {
    match entity {
        Entity::Tag(k) => e.tags.get(k).map(|v| Field::Text(v)),
        Entity::Attribute(a) => match a.as_str() {
            "name" => Some(Field::Text(&e.name)),
            "experiment_id" => Some(Field::Owned(e.id.to_string())),
            "creation_time" => Some(Field::Number(e.creation_time as f64)),
            "last_update_time" => Some(Field::Number(e.last_update_time as f64)),
            _ => None,
        },
        _ => None,
    }
}

/// A parsed run filter.
pub fn run_filter(s: &str) -> Result<Vec<Clause>, String> {
    parse_filter(s, &RUN_ATTRIBUTES)
}

/// A parsed experiment filter (attributes and tags only).
pub fn experiment_filter(s: &str) -> Result<Vec<Clause>, String> {
    let clauses = parse_filter(s, &EXPERIMENT_ATTRIBUTES)?;
    if let Some(c) = clauses
        .iter()
        .find(|c| matches!(c.entity, Entity::Metric(_) | Entity::Param(_)))
    {
        return Err(format!(
            "experiments are filtered by attributes and tags, not {:?}",
            c.entity
        ));
    }
    Ok(clauses)
}

/// Whether a run passes every clause.
pub fn run_matches(run: &ExternalRun, clauses: &[Clause]) -> bool {
    clauses
        .iter()
        .all(|c| test(run_field(run, &c.entity), c.op, &c.value))
}

/// Whether an experiment passes every clause.
pub fn experiment_matches(e: &Experiment, clauses: &[Clause]) -> bool {
    clauses
        .iter()
        .all(|c| test(experiment_field(e, &c.entity), c.op, &c.value))
}

/// Parses `order_by` terms: `<key> [ASC|DESC]`.
fn order(terms: &[String], attributes: &[&str]) -> Result<Vec<OrderTerm>, String> {
    terms
        .iter()
        .map(|t| {
            let toks = tokens(t)?;
            let (Some(Token::Ident(id)), rest) = (toks.first(), &toks[toks.len().min(1)..]) else {
                return Err(format!("invalid order_by clause `{t}`"));
            };
            let ascending = match rest {
                [] => true,
                [Token::Ident(d)] if d.eq_ignore_ascii_case("asc") => true,
                [Token::Ident(d)] if d.eq_ignore_ascii_case("desc") => false,
                _ => {
                    return Err(format!(
                        "invalid order_by clause `{t}`: use `<key> ASC|DESC`"
                    ));
                }
            };
            Ok(OrderTerm {
                entity: entity(id, attributes)?,
                ascending,
            })
        })
        .collect()
}

/// Parsed run `order_by` terms.
pub fn run_order(terms: &[String]) -> Result<Vec<OrderTerm>, String> {
    order(terms, &RUN_ATTRIBUTES)
}

/// Parsed experiment `order_by` terms.
pub fn experiment_order(terms: &[String]) -> Result<Vec<OrderTerm>, String> {
    order(terms, &EXPERIMENT_ATTRIBUTES)
}

fn compare(a: Option<Field<'_>>, b: Option<Field<'_>>, ascending: bool) -> Ordering {
    // absent values sort last in either direction, as in MLflow
    let text = |f: &Field<'_>| -> Option<String> {
        match f {
            Field::Text(s) => Some(s.to_string()),
            Field::Owned(s) => Some(s.clone()),
            Field::Number(_) => None,
        }
    };
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let o = match (&x, &y) {
                (Field::Number(p), Field::Number(q)) => p.total_cmp(q),
                _ => text(&x).cmp(&text(&y)),
            };
            if ascending { o } else { o.reverse() }
        }
    }
}

/// Orders runs by the terms, then by start time (latest first) and id, MLflow's default.
pub fn sort_runs(runs: &mut [ExternalRun], terms: &[OrderTerm]) {
    runs.sort_by(|a, b| {
        for t in terms {
            let o = compare(
                run_field(a, &t.entity),
                run_field(b, &t.entity),
                t.ascending,
            );
            if o != Ordering::Equal {
                return o;
            }
        }
        b.start_time.cmp(&a.start_time).then(a.id.cmp(&b.id))
    });
}

/// Orders experiments by the terms, then by creation (latest first) and id.
pub fn sort_experiments(exps: &mut [Experiment], terms: &[OrderTerm]) {
    exps.sort_by(|a, b| {
        for t in terms {
            let o = compare(
                experiment_field(a, &t.entity),
                experiment_field(b, &t.entity),
                t.ascending,
            );
            if o != Ordering::Equal {
                return o;
            }
        }
        b.creation_time.cmp(&a.creation_time).then(a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::runs::RunStatus;
    use crate::store::tracking::MetricPoint;

    fn run(id: i64, acc: Option<f64>, lr: &str, user: &str) -> ExternalRun {
        ExternalRun {
            id,
            experiment_id: 1,
            run_name: format!("run-{id}"),
            user_id: user.into(),
            status: RunStatus::Succeeded,
            start_time: Some(1000 + id),
            end_time: None,
            lifecycle_stage: "active".into(),
            params: [("lr".to_string(), lr.to_string())].into(),
            tags: [("mlflow.user".to_string(), user.to_string())].into(),
            metrics: acc
                .map(|v| MetricPoint {
                    key: "eval accuracy".into(),
                    value: v,
                    timestamp: 0,
                    step: 3,
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn filters_select_what_mlflow_would() {
        let runs = [
            run(1, Some(0.9), "1e-3", "ana"),
            run(2, Some(0.7), "1e-4", "bob"),
            run(3, None, "1e-3", "Ana"),
        ];
        let ids = |f: &str| -> Vec<i64> {
            let c = run_filter(f).unwrap();
            runs.iter()
                .filter(|r| run_matches(r, &c))
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids("metrics.`eval accuracy` > 0.8"), [1]);
        assert_eq!(ids("metrics.\"eval accuracy\" <= 0.9"), [1, 2]);
        assert_eq!(ids("params.lr = '1e-3'"), [1, 3]);
        assert_eq!(
            ids("params.lr = '1e-3' AND metrics.`eval accuracy` >= 0"),
            [1]
        );
        assert_eq!(ids("tags.\"mlflow.user\" LIKE 'a%'"), [1]);
        assert_eq!(ids("tags.`mlflow.user` ILIKE 'a%'"), [1, 3]);
        assert_eq!(ids("attributes.run_id IN ('2', '3')"), [2, 3]);
        assert_eq!(ids("attributes.run_name != 'run-2'"), [1, 3]);
        assert_eq!(ids("attributes.status = 'FINISHED'"), [1, 2, 3]);
        assert_eq!(ids("attributes.start_time > 1001"), [2, 3]);
        assert_eq!(ids(""), [1, 2, 3]);
        for bad in [
            "metrics.acc LIKE 'x'",
            "params.lr > 1",
            "foo.bar = 'x'",
            "attributes.nope = 'x'",
            "params.lr = '1' OR params.lr = '2'",
            "params.lr = '1' AND",
            "params.lr = 'unterminated",
        ] {
            assert!(run_filter(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn ordering_puts_missing_values_last_either_way() {
        let mut runs = vec![
            run(1, Some(0.9), "a", "x"),
            run(2, None, "b", "x"),
            run(3, Some(0.95), "c", "x"),
        ];
        sort_runs(
            &mut runs,
            &run_order(&["metrics.`eval accuracy` DESC".into()]).unwrap(),
        );
        assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 1, 2]);
        sort_runs(
            &mut runs,
            &run_order(&["metrics.`eval accuracy`".into()]).unwrap(),
        );
        assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3, 2]);
        sort_runs(&mut runs, &[]);
        assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 2, 1]);
        assert!(run_order(&["params.lr sideways".into()]).is_err());
    }

    #[test]
    fn like_matches_sql_semantics() {
        assert!(like("abc", "a%", false));
        assert!(like("abc", "%c", false));
        assert!(like("abc", "a_c", false));
        assert!(!like("abc", "a_", false));
        assert!(like("ABC", "a%", true));
        assert!(!like("ABC", "a%", false));
        assert!(like("", "%", false));
    }
}
