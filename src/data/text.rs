//! Text to model inputs through a checkpoint's `tokenizer.json`: truncation to `max_length`,
//! special tokens and token types from the tokenizer's post-processor, and padding to the
//! longest sequence of each batch (never to a fixed length).

use crate::data::Example;
use anyhow::{Context, Result, anyhow};
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
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
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
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

    /// Tokenizes examples (pairs where the example has a second text), in parallel.
    pub fn encode(&self, examples: &[Example]) -> Result<Vec<Encoded>> {
        let inputs: Vec<EncodeInput> = examples
            .iter()
            .map(|e| match &e.text_pair {
                Some(pair) => EncodeInput::Dual(e.text.as_str().into(), pair.as_str().into()),
                None => EncodeInput::Single(e.text.as_str().into()),
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

/// A padded batch of text inputs, shapes `[batch, longest]`.
#[derive(Debug)]
pub struct TextBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// Pads `items` to the longest among them with `pad_id` and builds the attention mask.
pub fn collate(items: &[&Encoded], pad_id: i64, device: Device) -> TextBatch {
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
    TextBatch {
        input_ids: t(&ids),
        attention_mask: t(&mask),
        token_type_ids: t(&types),
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
