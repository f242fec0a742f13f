//! A model-ready batch.

use tch::Tensor;

/// Inputs of one forward pass, named as Hugging Face names them. Text tensors are
/// `[batch, longest]`; image tensors are present for text+image models.
#[derive(Debug)]
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
    /// `[batch, 3, height, width]`, normalised as the checkpoint's preprocessor says.
    pub pixel_values: Option<Tensor>,
    /// `[batch, height, width]`, 1 over the image, 0 over padding (ViLT).
    pub pixel_mask: Option<Tensor>,
}
