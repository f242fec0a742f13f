//! Text to model inputs through a checkpoint's tokenizer: truncation to `max_length`, special
//! tokens and token types from the tokenizer's post-processor, and padding to the longest
//! sequence of each batch (never to a fixed length).
//!
//! The tokenizer is the checkpoint's `tokenizer.json`; a folder without one (as older
//! checkpoints such as BETO are published) gets the tokenizer Hugging Face's fast tokenizer
//! class would build from `vocab.txt` (BERT WordPiece) or `vocab.json` + `merges.txt`
//! (RoBERTa byte-level BPE), with the options of `tokenizer_config.json`.

use crate::models::batch::Batch;
use crate::models::{Checkpoint, VocabFiles};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// One tokenized example, unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

/// A checkpoint's tokenizer set up for classification inputs.
pub struct TextEncoder {
    tokenizer: Tokenizer,
}

impl TextEncoder {
    /// Loads `tokenizer.json`, truncating to `max_length` tokens (special tokens included) and
    /// switching off any padding the file configures: batches are padded by [`collate`].
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        Self::new(tokenizer, max_length)
    }

    /// The tokenizer of a checkpoint folder: its `tokenizer.json`, else one built from the
    /// vocabulary files of its architecture.
    pub fn for_checkpoint(ckpt: &Checkpoint, max_length: usize) -> Result<Self> {
        let dir = &ckpt.dir;
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json, max_length);
        }
        let options: Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let tokenizer = match ckpt.arch.vocab_files {
            Some(VocabFiles::WordPiece) => wordpiece_from_vocab(dir, &options)?,
            Some(VocabFiles::ByteLevelBpe) => bpe_from_vocab(dir, &options)?,
            None => bail!("{} has no tokenizer.json", dir.display()),
        };
        Self::new(tokenizer, max_length)
    }

    fn new(mut tokenizer: Tokenizer, max_length: usize) -> Result<Self> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow!("{e}"))
            .context("setting truncation")?;
        Ok(TextEncoder { tokenizer })
    }

    /// Tokenizes texts, each alone or with a second text of a pair, in parallel.
    pub fn encode<'a>(
        &self,
        texts: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Vec<Encoded>> {
        let inputs: Vec<EncodeInput> = texts
            .into_iter()
            .map(|(text, pair)| match pair {
                Some(pair) => EncodeInput::Dual(text.into(), pair.into()),
                None => EncodeInput::Single(text.into()),
            })
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| anyhow!("{e}"))
            .context("tokenizing texts")?;
        Ok(encodings
            .into_iter()
            .map(|enc| Encoded {
                ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
                type_ids: enc.get_type_ids().iter().map(|&i| i as i64).collect(),
            })
            .collect())
    }

    /// Id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.tokenizer.token_to_id(token).map(i64::from)
    }
}

/// Marks the special tokens the vocabulary has, so that they are never split; RoBERTa's mask
/// token swallows the space before it, as in Hugging Face.
fn add_specials(t: &mut Tokenizer, tokens: &[&str]) -> Result<()> {
    let added: Vec<AddedToken> = tokens
        .iter()
        .filter(|tok| t.token_to_id(tok).is_some())
        .map(|tok| AddedToken::from(tok.to_string(), true).lstrip(*tok == "<mask>"))
        .collect();
    t.add_special_tokens(added).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn special_id(t: &Tokenizer, token: &str, file: &Path) -> Result<(String, u32)> {
    let id = t
        .token_to_id(token)
        .with_context(|| format!("{} has no `{token}` token", file.display()))?;
    Ok((token.to_string(), id))
}

/// What `BertTokenizerFast` builds from `vocab.txt`: BERT normalisation (lower-casing and
/// accent stripping as `do_lower_case` / `strip_accents` say), WordPiece, `[CLS] A [SEP] B [SEP]`.
fn wordpiece_from_vocab(dir: &Path, options: &Value) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.txt");
    if !vocab.is_file() {
        bail!("{} has neither tokenizer.json nor vocab.txt", dir.display());
    }
    let flag = |k: &str| options.get(k).and_then(Value::as_bool);
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token(
            options
                .get("unk_token")
                .and_then(Value::as_str)
                .unwrap_or("[UNK]")
                .into(),
        )
        .build()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("reading {}", vocab.display()))?;
    let mut t = Tokenizer::new(model);
    let lowercase = flag("do_lower_case").unwrap_or(true);
    t.with_normalizer(Some(BertNormalizer::new(
        true,
        flag("tokenize_chinese_chars").unwrap_or(true),
        flag("strip_accents"),
        lowercase,
    )))
    .map_err(|e| anyhow!("{e}"))?;
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    add_specials(&mut t, &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])?;
    let (sep, cls) = (
        special_id(&t, "[SEP]", &vocab)?,
        special_id(&t, "[CLS]", &vocab)?,
    );
    t.with_post_processor(Some(BertProcessing::new(sep, cls)));
    t.with_decoder(Some(WordPieceDecoder::default()));
    Ok(t)
}

/// What `RobertaTokenizerFast` builds from `vocab.json` + `merges.txt`: byte-level BPE,
/// `<s> A </s></s> B </s>`.
fn bpe_from_vocab(dir: &Path, options: &Value) -> Result<Tokenizer> {
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if !vocab.is_file() || !merges.is_file() {
        bail!(
            "{} has neither tokenizer.json nor vocab.json and merges.txt",
            dir.display()
        );
    }
    let prefix_space = options
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .build()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("reading {} and {}", vocab.display(), merges.display()))?;
    let mut t = Tokenizer::new(model);
    t.with_pre_tokenizer(Some(ByteLevel::new(prefix_space, true, true)));
    add_specials(&mut t, &["<s>", "<pad>", "</s>", "<unk>", "<mask>"])?;
    let (sep, cls) = (
        special_id(&t, "</s>", &vocab)?,
        special_id(&t, "<s>", &vocab)?,
    );
    t.with_post_processor(Some(
        RobertaProcessing::new(sep, cls)
            .trim_offsets(true)
            .add_prefix_space(prefix_space),
    ));
    t.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(t)
}

/// Pads `items` to the longest among them with `pad_id` and builds the attention mask.
pub fn collate(items: &[&Encoded], pad_id: i64, device: Device) -> Batch {
    let len = items.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
    let n = items.len();
    let mut ids = vec![pad_id; n * len];
    let mut types = vec![0i64; n * len];
    let mut mask = vec![0i64; n * len];
    for (row, e) in items.iter().enumerate() {
        let at = row * len;
        ids[at..at + e.ids.len()].copy_from_slice(&e.ids);
        types[at..at + e.type_ids.len()].copy_from_slice(&e.type_ids);
        mask[at..at + e.ids.len()].fill(1);
    }
    let shape = [n as i64, len as i64];
    let t = |v: &[i64]| {
        Tensor::from_slice(v)
            .view(shape)
            .to_kind(Kind::Int64)
            .to_device(device)
    };
    Batch {
        input_ids: t(&ids),
        attention_mask: t(&mask),
        token_type_ids: t(&types),
        pixel_values: None,
        pixel_mask: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_padded_to_its_longest_item_only() {
        let a = Encoded {
            ids: vec![101, 7, 102],
            type_ids: vec![0, 0, 0],
        };
        let b = Encoded {
            ids: vec![101, 7, 8, 9, 102],
            type_ids: vec![0, 0, 0, 1, 1],
        };
        let batch = collate(&[&a, &b], 0, Device::Cpu);
        assert_eq!(batch.input_ids.size(), vec![2, 5]);
        assert_eq!(
            Vec::<i64>::try_from(batch.input_ids.view([-1])).unwrap(),
            vec![101, 7, 102, 0, 0, 101, 7, 8, 9, 102]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.attention_mask.view([-1])).unwrap(),
            vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1]
        );
        assert_eq!(
            Vec::<i64>::try_from(batch.token_type_ids.view([-1])).unwrap(),
            vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
        );
    }
}
