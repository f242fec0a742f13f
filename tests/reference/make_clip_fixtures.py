"""Reference fixtures for CLIP, made with Hugging Face transformers.

usage: make_clip_fixtures.py OUT_DIR MINILM_DIR   (MINILM_DIR is not used)

For each case, OUT_DIR/<case>/ gets
  checkpoint/          a random CLIPModel written by save_pretrained (config.json, model.safetensors)
  inputs.safetensors   input_ids, attention_mask (right-padded rows), pixel_values
  expected.safetensors the CLIPModel outputs in eval mode, float32: text_embeds, image_embeds
                       (L2-normalised), logits_per_image, logits_per_text
The Rust tests compare `modalbench forward` against these.

The weights are perturbed after initialisation (LayerNorm weights away from 1, biases away from 0,
logit_scale away from its init value) so that a bias or norm applied in the wrong place shows.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

OUT = sys.argv[1]
torch.manual_seed(0)


def clip_config(text, vision, **kw):
    text = dict(dict(vocab_size=99, max_position_embeddings=20, intermediate_size=50), **text)
    vision = dict(dict(intermediate_size=60, num_channels=3), **vision)
    return CLIPConfig(text_config=text, vision_config=vision, **kw)


def perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() <= 1 else 0.02))


def text_inputs(vocab_size, lengths, seq, eos, pad, low, high, left=()):
    """Padded rows, each ending in `eos` at its last real position; ids of the other real
    tokens are drawn from [low, high). Rows listed in `left` are padded on the left (where the
    padding mask, not the causal one, keeps the padding out of the pooled token)."""
    batch = len(lengths)
    ids = torch.randint(low, high, (batch, seq))
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, n - 1] = eos
        ids[i, n:] = pad
        mask[i, :n] = 1
        if i in left:
            ids[i] = ids[i].roll(seq - n)
            mask[i] = mask[i].roll(seq - n)
    assert ids.max() < vocab_size
    return {"input_ids": ids, "attention_mask": mask}


def write_case(name, config, inputs, images):
    case = os.path.join(OUT, name)
    os.makedirs(case, exist_ok=True)
    model = CLIPModel(config)
    perturb(model)
    model.eval()
    model.save_pretrained(os.path.join(case, "checkpoint"))
    size = config.vision_config.image_size
    inputs = dict(inputs, pixel_values=torch.randn(images, 3, size, size))
    with torch.no_grad():
        o = model(**inputs)
    expected = {
        "text_embeds": o.text_embeds,
        "image_embeds": o.image_embeds,
        "logits_per_image": o.logits_per_image,
        "logits_per_text": o.logits_per_text,
    }
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in expected.items()}, os.path.join(case, "expected.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)

    # legacy eos_token_id 2: the pooled token is the highest id of each row (openai's eot, the
    # last vocabulary entry); quick_gelu, odd widths, 3x3 patches of 10 pixels
    c = clip_config(
        dict(hidden_size=36, num_attention_heads=3, num_hidden_layers=1, hidden_act="quick_gelu",
             eos_token_id=2, pad_token_id=1, bos_token_id=0),
        dict(hidden_size=40, num_attention_heads=5, num_hidden_layers=3, image_size=30, patch_size=10,
             hidden_act="quick_gelu"),
        projection_dim=24,
    )
    vocab = c.text_config.vocab_size
    write_case("clip_eos2_quickgelu", c,
               text_inputs(vocab, [9, 5, 2], 9, eos=vocab - 1, pad=1, low=3, high=vocab - 1), images=3)

    # eos_token_id 5 below most ids (argmax would pick the wrong token): the first position
    # holding it; gelu, another projection width, 4x4 patches of 11 pixels, 2 images for 4 texts
    # (one left-padded)
    c = clip_config(
        dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, hidden_act="gelu",
             eos_token_id=5, pad_token_id=0, bos_token_id=4),
        dict(hidden_size=48, num_attention_heads=4, num_hidden_layers=2, image_size=44, patch_size=11,
             hidden_act="gelu"),
        projection_dim=20,
        logit_scale_init_value=1.5,
    )
    vocab = c.text_config.vocab_size
    write_case("clip_eos5_gelu", c,
               text_inputs(vocab, [11, 7, 3, 5], 11, eos=5, pad=0, low=6, high=vocab, left=(3,)), images=2)

    # padding with the eos token itself (as openai's tokenizer pads), below the other ids: only
    # its first position counts; an image size that 10-pixel patches do not divide (32 -> 3x3)
    c = clip_config(
        dict(hidden_size=30, num_attention_heads=2, num_hidden_layers=2, hidden_act="quick_gelu",
             eos_token_id=60, pad_token_id=60, bos_token_id=59, max_position_embeddings=12),
        dict(hidden_size=28, num_attention_heads=7, num_hidden_layers=1, image_size=32, patch_size=10,
             hidden_act="gelu"),
        projection_dim=16,
    )
    vocab = c.text_config.vocab_size
    write_case("clip_pad_is_eos", c,
               text_inputs(vocab, [12, 8, 4, 6], 12, eos=60, pad=60, low=61, high=vocab), images=4)

    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f)


main()
