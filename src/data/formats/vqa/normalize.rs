//! The answer normalisation of the official VQA evaluation (`vqaEval.py` in GT-Vision-Lab/VQA,
//! `PythonEvaluationTools/vqaEvaluation/vqaEval.py`): the answer's newlines and tabs become
//! spaces, it is stripped, then `processPunctuation` and `processDigitArticle` run.
//!
//! The port keeps the script's quirks, since answers must match what it produces:
//! - a punctuation mark is deleted (rather than replaced by a space) when the *input* has it
//!   next to a space, and every mark is deleted when the input has a digit, comma, digit;
//! - `periodStrip` is `(?!<=\d)(\.)(?!\d)`, whose `(?!<=\d)` is a look-ahead that can never
//!   see `<=` where a period is, so it deletes every period not followed by a digit;
//! - `periodStrip.sub("", text, re.UNICODE)` passes `re.UNICODE` (32) as the *count*: only the
//!   first 32 such periods go;
//! - `\d` is any Unicode decimal digit (Python's `str` patterns), and `lower()`/`split()` are
//!   Python's (its whitespace includes the separators U+001C..U+001F);
//! - the contraction table's entries with capitals (`Im`, `Ive`, `Id've`) never match a
//!   lowercased word, and `somebody'd` maps to `somebodyd`: both as published.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Normalises a VQA answer exactly as the official evaluation does.
pub fn normalize_answer(answer: &str) -> String {
    let answer = answer.replace(['\n', '\t'], " ");
    process_digit_article(&process_punctuation(answer.trim_matches(is_py_space)))
}

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// How many periods `periodStrip` removes (`re.UNICODE` passed as `count`).
const PERIOD_COUNT: usize = 32;

fn process_punctuation(in_text: &str) -> String {
    let comma_strip = {
        let c: Vec<char> = in_text.chars().collect();
        c.windows(3)
            .any(|w| is_decimal(w[0]) && w[1] == ',' && is_decimal(w[2]))
    };
    // every mark is replaced in one pass: the script's per-mark `replace` calls never create
    // or remove another mark, and each decision looks at the input only
    let mut spaced: [Option<bool>; PUNCT.len()] = [None; PUNCT.len()];
    let mut out = String::with_capacity(in_text.len());
    for c in in_text.chars() {
        match PUNCT.iter().position(|&p| p == c) {
            Some(i) => {
                let next_to_space = *spaced[i].get_or_insert_with(|| {
                    in_text.contains(&format!("{c} ")) || in_text.contains(&format!(" {c}"))
                });
                if !(next_to_space || comma_strip) {
                    out.push(' ');
                }
            }
            None => out.push(c),
        }
    }
    period_strip(&out)
}

/// `re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", text, 32)`.
fn period_strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut removed = 0;
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_digit = chars.get(i + 1).is_some_and(|&n| is_decimal(n));
        if c == '.' && !followed_by_digit && removed < PERIOD_COUNT {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

fn process_digit_article(in_text: &str) -> String {
    let contractions = contractions();
    in_text
        .to_lowercase()
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .map(|w| manual_map(w).unwrap_or(w))
        .filter(|w| !["a", "an", "the"].contains(w))
        .map(|w| contractions.get(w).copied().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ")
}

fn manual_map(word: &str) -> Option<&'static str> {
    Some(match word {
        "none" => "0",
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        _ => return None,
    })
}

/// `contractions` of vqaEval.py, in its order: pairs of `key value`.
const CONTRACTIONS: &str = "\
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn't've  couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't
hadnt hadn't  hadnt've hadn't've  hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd
hed've he'd've  he'dve he'd've  hes he's  howd how'd  howll how'll  hows how's  Id've I'd've
I'dve I'd've  Im I'm  Ive I've  isnt isn't  itd it'd  itd've it'd've  it'dve it'd've
itll it'll  let's let's  maam ma'am  mightnt mightn't  mightnt've mightn't've
mightn'tve mightn't've  mightve might've  mustnt mustn't  mustve must've  neednt needn't
notve not've  oclock o'clock  oughtnt oughtn't  ow's'at 'ow's'at  'ows'at 'ow's'at
'ow'sat 'ow's'at  shant shan't  shed've she'd've  she'dve she'd've  she's she's
shouldve should've  shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've
somebody'd somebodyd  somebodyd've somebody'd've  somebody'dve somebody'd've
somebodyll somebody'll  somebodys somebody's  someoned someone'd  someoned've someone'd've
someone'dve someone'd've  someonell someone'll  someones someone's  somethingd something'd
somethingd've something'd've  something'dve something'd've  somethingll something'll
thats that's  thered there'd  thered've there'd've  there'dve there'd've  therere there're
theres there's  theyd they'd  theyd've they'd've  they'dve they'd've  theyll they'll
theyre they're  theyve they've  twas 'twas  wasnt wasn't  wed've we'd've  we'dve we'd've
weve we've  werent weren't  whatll what'll  whatre what're  whats what's  whatve what've
whens when's  whered where'd  wheres where's  whereve where've  whod who'd  whod've who'd've
who'dve who'd've  wholl who'll  whos who's  whove who've  whyll why'll  whyre why're
whys why's  wont won't  wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've
wouldn'tve wouldn't've  yall y'all  yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've
y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd  youd've you'd've  you'dve you'd've
youll you'll  youre you're  youve you've";

fn contractions() -> &'static HashMap<&'static str, &'static str> {
    static TABLE: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let words: Vec<&str> = CONTRACTIONS.split_whitespace().collect();
        words.chunks(2).map(|p| (p[0], p[1])).collect()
    })
}

/// Python's `str.isspace()`: Unicode White_Space plus the separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\d` in a `str` pattern: Unicode category Nd. Nd comes in runs of ten (one of
/// fifty); these are the runs' first code points, listed from Python's `unicodedata`
/// (Unicode 14.0) with `[c for c in range(0x110000) if unicodedata.category(chr(c)) == "Nd"]`.
const DECIMAL_RUNS: [u32; 62] = [
    0x30, 0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66,
    0xde6, 0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90,
    0x1b50, 0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10,
    0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650,
    0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50,
    0x1d7ce, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
];

fn is_decimal(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let c = c as u32;
    DECIMAL_RUNS.iter().any(|&start| {
        // the mathematical digits (U+1D7CE..U+1D7FF) are the one run of fifty
        let len = if start == 0x1d7ce { 50 } else { 10 };
        (start..start + len).contains(&c)
    })
}
