"""Reference fixtures for ViLT, made with Hugging Face transformers.

usage: make_vilt_fixtures.py OUT_DIR MINILM_DIR   (MINILM_DIR is not used; every script gets it)

For each case, OUT_DIR/<case>/ gets
  checkpoint/          written by save_pretrained (config.json, model.safetensors)
  inputs.safetensors   input_ids, attention_mask, token_type_ids (padded rows), pixel_values of
                       images of different sizes padded with zeros to one canvas, and pixel_mask
                       marking the padding (as ViltImageProcessor pads) unless the case omits it
  expected.safetensors the transformers outputs in eval mode, float32: last_hidden_state,
                       pooler_output (where the model has a pooler), logits (where it has a head)
The Rust test compares `modalbench forward` against these.

Patch selection. `ViltEmbeddings.visual_embed` picks the image tokens with `torch.multinomial`,
even in eval mode: an image with at least as many valid patches as the sequence has image slots
gets a random subset of them in random order, an image with fewer gets all of them in row-major
order followed by randomly chosen padding patches. The Rust port makes that choice
deterministically in eval mode (valid patches in row-major order, evenly spaced when there are
too many, then the first padding patches in row-major order). To compare whole outputs, the
expected outputs are computed with `torch.multinomial` replaced by `deterministic_multinomial`,
which makes exactly that choice, and nothing else changed. That the choice is only a
permutation (where nothing is subsampled) is checked against unmodified transformers here:
pooler_output, logits and the text positions of last_hidden_state must agree.
"""

import contextlib
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import ViltConfig, ViltForMaskedLM, ViltForQuestionAnswering, ViltModel

OUT = sys.argv[1]
torch.manual_seed(0)


def deterministic_multinomial(weights, num_samples, replacement=False, **_):
    """The choice the Rust port makes, for the two calls `visual_embed` makes (uniform weights):
    with replacement (padding patches) the first `num_samples` candidates, without (valid
    patches) `num_samples` evenly spaced ones, in order."""
    n, k = weights.numel(), int(num_samples)
    if replacement:
        return torch.arange(k) % n
    return torch.arange(k) * n // k


@contextlib.contextmanager
def deterministic_patch_choice():
    original = torch.multinomial
    torch.multinomial = deterministic_multinomial
    try:
        yield
    finally:
        torch.multinomial = original


def text_inputs(vocab_size, lengths, seq):
    batch = len(lengths)
    ids = torch.randint(5, vocab_size, (batch, seq))
    mask = torch.zeros(batch, seq, dtype=torch.long)
    types = torch.zeros(batch, seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        types[i, n // 2 : n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def image_inputs(sizes, canvas, with_mask=True):
    """Random images of the given (height, width), zero-padded to `canvas` at the bottom and
    right, with the mask of the image pixels."""
    h, w = canvas
    pixels = torch.zeros(len(sizes), 3, h, w)
    mask = torch.zeros(len(sizes), h, w, dtype=torch.long)
    for i, (ih, iw) in enumerate(sizes):
        pixels[i, :, :ih, :iw] = torch.randn(3, ih, iw)
        mask[i, :ih, :iw] = 1
    out = {"pixel_values": pixels}
    if with_mask:
        out["pixel_mask"] = mask
    return out


def outputs(model, inputs):
    base = model if isinstance(model, ViltModel) else model.vilt
    o = base(**inputs)
    expected = {"last_hidden_state": o.last_hidden_state}
    if o.pooler_output is not None:
        expected["pooler_output"] = o.pooler_output
    if hasattr(model, "classifier"):
        expected["logits"] = model(**inputs).logits
    return expected


def randomize(model):
    """transformers starts `cls_token` and the patch `position_embeddings` at zero, and biases and
    norms at 0 and 1, which would leave the position interpolation and the biases untested."""
    emb = model.vilt.embeddings if hasattr(model, "vilt") else model.embeddings
    with torch.no_grad():
        emb.cls_token.normal_(std=0.5)
        emb.position_embeddings.normal_(std=0.5)
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


def write_case(name, model, inputs, subsampled=False):
    case = os.path.join(OUT, name)
    randomize(model)
    model.eval()
    model.save_pretrained(os.path.join(case, "checkpoint"))
    with torch.no_grad():
        with deterministic_patch_choice():
            expected = outputs(model, inputs)
        # unmodified transformers, its own random choice: the same up to the order of image tokens
        if not subsampled:
            reordered = False
            for seed in (1, 2):
                torch.manual_seed(seed)
                free = outputs(model, inputs)
                text = inputs["input_ids"].shape[1]
                for k in ("pooler_output", "logits"):
                    if k in expected:
                        diff = (free[k] - expected[k]).abs().max().item()
                        assert diff < 1e-5, f"{name}: {k} depends on the patch order ({diff})"
                diff = (free["last_hidden_state"][:, :text] - expected["last_hidden_state"][:, :text]).abs().max()
                assert diff < 1e-5, f"{name}: text states depend on the patch order ({diff})"
                reordered |= bool((free["last_hidden_state"] - expected["last_hidden_state"]).abs().max() > 1e-3)
            assert reordered, f"{name}: transformers' own choice was the deterministic one; the check proves nothing"
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in expected.items()}, os.path.join(case, "expected.safetensors"))


def vilt_config(**kw):
    base = dict(vocab_size=99, max_position_embeddings=24, image_size=32, patch_size=8)
    base.update(kw)
    return ViltConfig(**base)


def main():
    os.makedirs(OUT, exist_ok=True)
    # base model: odd hidden size and head count, one layer; three image sizes on a canvas
    # larger than image_size (the 4x4 position grid is interpolated up and down)
    c = vilt_config(hidden_size=36, num_attention_heads=3, num_hidden_layers=1, intermediate_size=50)
    inputs = text_inputs(c.vocab_size, [11, 8, 5], 11)
    inputs.update(image_inputs([(40, 48), (24, 32), (16, 40)], (40, 48)))
    write_case("vilt_base_h36_l1", ViltModel(c), inputs)

    # classifier, 2 labels, three layers, tanh GELU, a canvas not a multiple of the patch size
    # (the pixel mask is resized with the non-integer scale of nearest interpolation)
    c = vilt_config(hidden_size=60, num_attention_heads=5, num_hidden_layers=3, intermediate_size=70,
                    hidden_act="gelu_new", image_size=48, patch_size=16, num_labels=2, layer_norm_eps=1e-5)
    inputs = text_inputs(c.vocab_size, [9, 9, 4], 9)
    inputs.update(image_inputs([(70, 52), (38, 52), (70, 20)], (70, 52)))
    write_case("vilt_cls2_h60_l3", ViltForQuestionAnswering(c), inputs)

    # classifier, 5 labels, no q/k/v bias, a padding token id, and max_image_length below the
    # largest image's patch count: that image is subsampled, the others padded up to it
    c = vilt_config(hidden_size=48, num_attention_heads=4, num_hidden_layers=2, intermediate_size=40,
                    qkv_bias=False, pad_token_id=0, max_image_length=7, num_labels=5)
    inputs = text_inputs(c.vocab_size, [12, 7], 12)
    inputs.update(image_inputs([(32, 40), (16, 24)], (32, 40)))
    write_case("vilt_cls5_h48_l2", ViltForQuestionAnswering(c), inputs, subsampled=True)

    # a masked-LM checkpoint (`vilt.` prefix, `mlm_score.` head) run as the base model, no
    # pixel_mask (transformers then assumes image_size x image_size of valid pixels)
    c = vilt_config(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=48)
    inputs = text_inputs(c.vocab_size, [6, 3], 6)
    inputs.update(image_inputs([(32, 32), (32, 32)], (32, 32), with_mask=False))
    write_case("vilt_mlm_h32_l2", ViltForMaskedLM(c), inputs)

    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f)


main()
