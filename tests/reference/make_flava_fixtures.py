"""Reference fixtures for FLAVA, made with Hugging Face transformers.

usage: make_flava_fixtures.py OUT_DIR MINILM_DIR   (MINILM_DIR is not used)

For each case, OUT_DIR/<case>/ gets
  checkpoint/          written by save_pretrained (config.json, model.safetensors)
  inputs.safetensors   input_ids, attention_mask, token_type_ids (rows padded), pixel_values
  expected.safetensors FlavaModel's outputs in eval mode, float32:
                       text_/image_/multimodal_last_hidden_state and _pooler_output (from
                       text_output, image_output and multimodal_output), and logits for the
                       classifier case
The Rust tests compare `modalbench forward` against these.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import FlavaConfig, FlavaForPreTraining, FlavaModel

OUT = sys.argv[1]
torch.manual_seed(0)


def encoder(hidden, heads, layers, inner, **kw):
    # nonzero dropout everywhere, so a forward pass that forgets eval mode shows
    out = dict(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers, intermediate_size=inner,
               hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    out.update(kw)
    return out


def flava_config(text, image, multimodal, **kw):
    return FlavaConfig(
        text_config=text,
        image_config=image,
        multimodal_config=multimodal,
        # a small codebook: FlavaForPreTraining builds one, FlavaModel does not use it
        image_codebook_config=dict(hidden_size=8, vocab_size=image.get("vocab_size", 8192)),
        **kw,
    )


def inputs_for(config, lengths, seq, height=None, width=None):
    t, i = config.text_config, config.image_config
    batch = len(lengths)
    ids = torch.randint(5, t.vocab_size, (batch, seq))
    mask = torch.zeros(batch, seq, dtype=torch.long)
    types = torch.zeros(batch, seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = t.pad_token_id
        types[row, n // 2 : n] = 1
    size = i.image_size if isinstance(i.image_size, (list, tuple)) else (i.image_size, i.image_size)
    pixels = torch.randn(batch, i.num_channels, size[0], size[1])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "pixel_values": pixels}


def outputs_of(flava, inputs):
    o = flava(**inputs)
    out = {}
    for part in ("text", "image", "multimodal"):
        sub = getattr(o, f"{part}_output")
        out[f"{part}_last_hidden_state"] = sub.last_hidden_state
        out[f"{part}_pooler_output"] = sub.pooler_output
    return out


def jitter(module):
    """Adds noise to every parameter: transformers starts CLS tokens, position embeddings,
    biases and norms at constants, which would hide a port that mixes them up."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return module


def write_case(name, model, inputs, flava=None):
    """Saves `model` and the outputs of `flava` (the FlavaModel inside it, or itself)."""
    case = os.path.join(OUT, name)
    ckpt = os.path.join(case, "checkpoint")
    os.makedirs(case, exist_ok=True)
    jitter(model).eval()
    flava = flava or model
    model.save_pretrained(ckpt)
    assert os.path.exists(os.path.join(ckpt, "model.safetensors")), "save_pretrained wrote no model.safetensors"
    with torch.no_grad():
        expected = outputs_of(flava, inputs)
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in expected.items()}, os.path.join(case, "expected.safetensors"))


def write_classifier_case(name, config, inputs, labels):
    """A fine-tuned classifier as modalbench saves one: FlavaModel under `flava.` and the
    ViLT-VQA-shaped head `classifier.{0,1,3}` (Linear(H, 2H), LayerNorm(2H), GELU,
    Linear(2H, labels)) on the multimodal pooled output. transformers has no such class, so
    the head is built here from torch modules and the weights written by hand."""
    flava = jitter(FlavaModel(config)).eval()
    hidden = config.multimodal_config.hidden_size
    head = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(),
                         nn.Linear(2 * hidden, labels))
    jitter(head).eval()
    case = os.path.join(OUT, name)
    ckpt = os.path.join(case, "checkpoint")
    flava.save_pretrained(ckpt)
    weights = os.path.join(ckpt, "model.safetensors")
    tensors = {f"flava.{k}": v.contiguous() for k, v in flava.state_dict().items()}
    tensors.update({f"classifier.{k}": v.contiguous() for k, v in head.state_dict().items()})
    save_file(tensors, weights, metadata={"format": "pt"})
    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["FlavaForMultimodalClassification"]
    cfg["id2label"] = {str(i): f"label_{i}" for i in range(labels)}
    cfg["label2id"] = {f"label_{i}": i for i in range(labels)}
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with torch.no_grad():
        expected = outputs_of(flava, inputs)
        expected["logits"] = head(expected["multimodal_pooler_output"])
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in expected.items()}, os.path.join(case, "expected.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)

    # one size everywhere: hidden 36, 3 heads, one layer; 40x40 images in 8x8 patches (5x5)
    c = flava_config(
        text=encoder(36, 3, 1, 50, vocab_size=90, max_position_embeddings=24),
        image=encoder(36, 3, 1, 50, image_size=40, patch_size=8, vocab_size=30),
        multimodal=encoder(36, 3, 1, 50),
        projection_dim=20,
    )
    write_case("flava_h36_l1", FlavaModel(c), inputs_for(c, [11, 8, 5], 11))

    # a different size per encoder, other activations and norms, no qkv biases on the image
    # side, no mask token; 44x44 images in 8x8 patches (5x5, the last 4 pixels unused)
    c = flava_config(
        text=encoder(60, 5, 3, 70, hidden_act="gelu_new", vocab_size=110, max_position_embeddings=30,
                     type_vocab_size=3, layer_norm_eps=1e-6, pad_token_id=1),
        image=encoder(48, 4, 2, 52, image_size=44, patch_size=8, qkv_bias=False, mask_token=False,
                      vocab_size=30, layer_norm_eps=1e-5),
        multimodal=encoder(44, 4, 2, 40, hidden_act="relu"),
        projection_dim=28,
        logit_scale_init_value=1.5,
    )
    write_case("flava_mixed_h60_h48_h44", FlavaModel(c), inputs_for(c, [9, 9, 4], 9))

    # no multimodal CLS token (the pooler takes the image CLS), non-square images 48x30 in
    # 6x6 patches (8x5), grayscale
    c = flava_config(
        text=encoder(32, 4, 2, 40, vocab_size=70, max_position_embeddings=16),
        image=encoder(30, 3, 2, 34, image_size=[48, 30], patch_size=6, num_channels=1, vocab_size=30),
        multimodal=encoder(40, 5, 1, 45, use_cls_token=False),
        projection_dim=16,
    )
    write_case("flava_no_mm_cls_nonsquare", FlavaModel(c), inputs_for(c, [7, 3], 7))

    # a pre-training checkpoint: `flava.` prefix, pre-training heads and an image codebook
    c = flava_config(
        text=encoder(24, 2, 2, 40, vocab_size=60, max_position_embeddings=20),
        image=encoder(28, 2, 1, 30, image_size=32, patch_size=8, vocab_size=30),
        multimodal=encoder(26, 2, 1, 30),
        projection_dim=12,
        hidden_size=26,
    )
    model = FlavaForPreTraining(c)
    write_case("flava_pretraining", model, inputs_for(c, [10, 6], 10), flava=model.flava)

    # a classifier with 3 labels, as a fine-tuning run saves it
    c = flava_config(
        text=encoder(20, 2, 1, 30, vocab_size=50, max_position_embeddings=16),
        image=encoder(24, 3, 1, 30, image_size=24, patch_size=8, vocab_size=30),
        multimodal=encoder(30, 3, 2, 36),
        projection_dim=10,
    )
    write_classifier_case("flava_cls3", c, inputs_for(c, [8, 5, 2], 8), labels=3)

    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f)


main()
