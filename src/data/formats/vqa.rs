//! VQA v2 (Goyal et al., 2017; visualqa.org) as published: per split a questions file
//! `v2_OpenEnded_mscoco_<split>_questions.json` (`{"questions": [{"image_id", "question",
//! "question_id"}]}`) and an annotations file `v2_mscoco_<split>_annotations.json`
//! (`{"annotations": [{"question_id", "answers": [{"answer", ...}], ...}]}`); the test split
//! (`test2015`) has no annotations and is prediction-only. COCO images are
//! `COCO_<split>_<12-digit image_id>.jpg`, in the image folder or its `<split>/` sub-folder.
//! The options' `splits` name other questions files; the annotations file beside one is its
//! name with `annotations` for `questions` (and no `OpenEnded_`), and without one the split is
//! prediction-only (train excepted). Without test2015 (or test-dev2015) questions the test
//! split is empty.
//!
//! VQA is read as soft-label classification over the `top_k` answers (default 3129, the size
//! of the answer set of Anderson et al.'s bottom-up attention code and ViLT) that the train
//! split's annotators gave most often, each annotator's answer counting once. A question scores
//! each class by how many of its annotators gave it: min(1, 0.3 n), as those codebases do.
//! Answers are normalised as the official evaluation normalises a *predicted* answer
//! ([`normalize_answer`]), for the classes and for [`Example::answers`] alike; the official
//! script only strips punctuation from the annotators' answers (and only when they disagree),
//! so an annotator's "two" matches a predicted "2" here but not there.

mod normalize;
mod stream;

pub use normalize::normalize_answer;

use super::{Format, LineError, relative};
use crate::data::{Example, Problems, Source, Split, Splits, Task};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The layout.
pub static FORMAT: Format = Format {
    name: "vqa_v2",
    detect,
    read,
};

/// Answer classes when the options give no `top_k`.
pub const DEFAULT_TOP_K: usize = 3129;

/// Question files by role, first found wins; the test role may have none.
const QUESTIONS: [&[&str]; 3] = [
    &["v2_OpenEnded_mscoco_train2014_questions.json"],
    &["v2_OpenEnded_mscoco_val2014_questions.json"],
    &[
        "v2_OpenEnded_mscoco_test2015_questions.json",
        "v2_OpenEnded_mscoco_test-dev2015_questions.json",
    ],
];

fn detect(root: &Path) -> bool {
    let train = root.join(QUESTIONS[0][0]);
    train.is_file() && annotations_for(&train).is_some_and(|a| a.is_file())
}

/// The annotations file published beside a questions file (`v2_OpenEnded_mscoco_X_questions`
/// → `v2_mscoco_X_annotations`, also for VQA v1's names); `None` if the name has no
/// `questions` in it.
pub fn annotations_for(questions: &Path) -> Option<PathBuf> {
    let name = questions
        .file_name()?
        .to_str()?
        .replacen("OpenEnded_", "", 1);
    let at = name.rfind("questions")?;
    let name = format!(
        "{}annotations{}",
        &name[..at],
        &name[at + "questions".len()..]
    );
    Some(questions.with_file_name(name))
}

/// The score of an answer `n` annotators gave.
pub fn soft_score(n: usize) -> f32 {
    match n {
        0 => 0.0,
        1 => 0.3,
        2 => 0.6,
        3 => 0.9,
        _ => 1.0,
    }
}

struct Question {
    id: u64,
    image_id: u64,
    text: String,
}

fn read(source: &Source, problems: &mut Problems) -> Result<Splits> {
    let root = &source.root;
    let top_k = source.options.top_k.unwrap_or(DEFAULT_TOP_K);
    if top_k == 0 {
        bail!("`top_k` must be at least 1");
    }
    if source.options.label_names.is_some() {
        bail!("`label_names` does not apply to vqa_v2: the classes are the top_k train answers");
    }
    let image_dir = source.image_dir();
    let mut splits = Splits {
        task: Task::SoftLabels,
        ..Default::default()
    };
    let mut normalized: HashMap<String, String> = HashMap::new();
    for (i, (role, names)) in Split::ALL.into_iter().zip(QUESTIONS).enumerate() {
        let given = source.options.splits.as_ref().and_then(|s| s.get(&role));
        let file = match given {
            Some(f) => root.join(f),
            None => match names.iter().map(|n| root.join(n)).find(|p| p.is_file()) {
                Some(f) => f,
                // test2015 is often not downloaded; without it the test split is empty
                None if role == Split::Test => {
                    splits.files[i] = "none (no test2015 questions)".into();
                    continue;
                }
                None => bail!(
                    "{}: no {role} questions file ({})",
                    root.display(),
                    names[0]
                ),
            },
        };
        let (subtype, questions) = read_questions(root, &file, problems)?;
        let coco = coco_split(&file, subtype.as_deref()).with_context(|| {
            format!(
                "{}: no `data_subtype`, and the file is not named like \
                 v2_OpenEnded_mscoco_<split>_questions.json: which COCO images does it ask about?",
                relative(root, &file)
            )
        })?;
        let ann_file = annotations_for(&file).filter(|a| a.is_file());
        let mut answers = match &ann_file {
            Some(a) => Some(read_annotations(root, a, &mut normalized, problems)?),
            None if role == Split::Train => bail!(
                "{}: no annotations file beside it (expected {}); the train split needs answers",
                relative(root, &file),
                annotations_for(&file).map_or("one".into(), |a| relative(root, &a))
            ),
            None => None,
        };
        let mut images: HashMap<u64, PathBuf> = HashMap::new();
        let mut examples = Vec::with_capacity(questions.len());
        for q in questions {
            let answers = match &mut answers {
                None => Vec::new(),
                Some(by_question) => match by_question.remove(&q.id) {
                    Some(a) => a,
                    None => {
                        let ann = relative(root, ann_file.as_deref().expect("read"));
                        problems.push(
                            root,
                            &file,
                            None,
                            format!("question_id {}: no annotation in {ann}", q.id),
                        );
                        continue;
                    }
                },
            };
            let image = images
                .entry(q.image_id)
                .or_insert_with(|| image_file(&image_dir, &coco, q.image_id))
                .clone();
            examples.push(Example {
                id: q.id.to_string(),
                text: q.text,
                image: Some(image),
                answers,
                ..Default::default()
            });
        }
        splits.files[i] = relative(root, &file);
        match i {
            0 => splits.train = examples,
            1 => splits.dev = examples,
            _ => splits.test = examples,
        }
    }
    splits.label_names = top_answers(&splits.train, top_k);
    let index: HashMap<&str, usize> = splits
        .label_names
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), i))
        .collect();
    for e in splits
        .train
        .iter_mut()
        .chain(&mut splits.dev)
        .chain(&mut splits.test)
    {
        (e.soft_labels, e.label) = soft_labels(&e.answers, &index);
    }
    Ok(splits)
}

/// The `k` answers the annotators gave most often (each annotator's answer counts), most
/// frequent first; ties go to the alphabetically first answer so the classes are the same on
/// every read.
pub fn top_answers(examples: &[Example], k: usize) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in examples.iter().flat_map(|e| &e.answers) {
        *counts.entry(a).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts.into_iter().take(k).map(|(a, _)| a.into()).collect()
}

/// Soft scores of the answer classes among `answers`, by class index, and the label: the
/// class scored highest, the most frequent class among equals; `None` when no answer is a
/// class.
pub fn soft_labels(
    answers: &[String],
    index: &HashMap<&str, usize>,
) -> (Vec<(usize, f32)>, Option<usize>) {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for a in answers {
        if let Some(&i) = index.get(a.as_str()) {
            *counts.entry(i).or_default() += 1;
        }
    }
    let scores: Vec<(usize, f32)> = counts
        .into_iter()
        .map(|(i, n)| (i, soft_score(n)))
        .collect();
    // classes are in index order: the first of the highest scores is the most frequent class
    let label = scores
        .iter()
        .fold(None, |best: Option<(usize, f32)>, &(i, s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i);
    (scores, label)
}

/// The COCO split whose images a questions file asks about: its `data_subtype`, else the
/// `<split>` of its official name; test-dev's images are test2015's.
fn coco_split(file: &Path, subtype: Option<&str>) -> Option<String> {
    let from_name = || {
        let name = file.file_name()?.to_str()?;
        let rest = &name[name.find("mscoco_")? + "mscoco_".len()..];
        Some(rest[..rest.find("_questions")?].to_string())
    };
    let split = subtype.map(str::to_string).or_else(from_name)?;
    Some(split.replacen("test-dev", "test", 1))
}

/// `COCO_<split>_<id>.jpg` relative to the image folder: directly in it if there, else in its
/// `<split>/` sub-folder (where a missing image is then reported).
fn image_file(image_dir: &Path, split: &str, image_id: u64) -> PathBuf {
    let name = format!("COCO_{split}_{image_id:012}.jpg");
    if image_dir.join(&name).is_file() || !image_dir.join(split).is_dir() {
        PathBuf::from(name)
    } else {
        Path::new(split).join(name)
    }
}

/// Reads a questions file: its `data_subtype` and its well-formed questions; bad entries go to
/// `problems` naming the entry and field.
fn read_questions(
    root: &Path,
    file: &Path,
    problems: &mut Problems,
) -> Result<(Option<String>, Vec<Question>)> {
    let mut questions = Vec::new();
    let mut seen = HashSet::new();
    let subtype = stream::read_array(root, file, "questions", &mut |i, v| {
        let q = (|| {
            Ok::<_, LineError>(Question {
                id: id_field(&v, "question_id")?,
                image_id: id_field(&v, "image_id")?,
                text: match v.get("question") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(LineError::invalid(
                            "question",
                            format!("field `question` must be a string, found {other}"),
                        ));
                    }
                    None => return Err(LineError::Missing("question".into())),
                },
            })
        })();
        match q {
            Ok(q) if !seen.insert(q.id) => problems.push(
                root,
                file,
                None,
                format!("questions[{i}]: question_id {} appears twice", q.id),
            ),
            Ok(q) => questions.push(q),
            Err(msg) => problems.push(root, file, None, format!("questions[{i}]: {msg}")),
        }
    })?;
    Ok((subtype, questions))
}

/// Reads an annotations file: each question's normalised answers.
fn read_annotations(
    root: &Path,
    file: &Path,
    normalized: &mut HashMap<String, String>,
    problems: &mut Problems,
) -> Result<HashMap<u64, Vec<String>>> {
    let mut out = HashMap::new();
    stream::read_array(root, file, "annotations", &mut |i, v| {
        let answers = (|| {
            let id = id_field(&v, "question_id")?;
            let list = match v.get("answers") {
                Some(Value::Array(a)) if !a.is_empty() => a,
                Some(Value::Array(_)) => {
                    return Err(LineError::invalid("answers", "field `answers` is empty"));
                }
                Some(other) => {
                    return Err(LineError::invalid(
                        "answers",
                        format!("field `answers` must be a list, found {other}"),
                    ));
                }
                None => return Err(LineError::Missing("answers".into())),
            };
            let mut answers = Vec::with_capacity(list.len());
            for (j, a) in list.iter().enumerate() {
                let raw = match a.get("answer") {
                    Some(Value::String(s)) => s,
                    Some(other) => {
                        return Err(LineError::invalid(
                            format!("answers[{j}].answer"),
                            format!("field `answers[{j}].answer` must be a string, found {other}"),
                        ));
                    }
                    None => return Err(LineError::Missing(format!("answers[{j}].answer"))),
                };
                let norm = normalized
                    .entry(raw.clone())
                    .or_insert_with(|| normalize_answer(raw));
                answers.push(norm.clone());
            }
            Ok((id, answers))
        })();
        match answers {
            Ok((id, answers)) => {
                if out.insert(id, answers).is_some() {
                    let msg = format!("annotations[{i}]: question_id {id} appears twice");
                    problems.push(root, file, None, msg);
                }
            }
            Err(msg) => problems.push(root, file, None, format!("annotations[{i}]: {msg}")),
        }
    })?;
    Ok(out)
}

fn id_field(v: &Value, name: &str) -> Result<u64, LineError> {
    match v.get(name) {
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().expect("checked")),
        Some(other) => Err(LineError::invalid(
            name,
            format!("field `{name}` must be a non-negative integer, found {other}"),
        )),
        None => Err(LineError::Missing(name.to_string())),
    }
}
