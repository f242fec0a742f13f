"""The training loop's reference: the same small random checkpoints trained with PyTorch and
transformers, step for step as a transformers `Trainer` would (AdamW with its two parameter
groups, `clip_grad_norm_`, the scheduler of `get_scheduler` with ceil(warmup_ratio x steps)
warm-up steps, mean cross-entropy over the batch).

    train_reference.py OUT MINILM_DIR     writes the checkpoints into OUT:
        bert/   BertForSequenceClassification, 2 labels, dropout off
        vilt/   ViltForQuestionAnswering used as a 2-label classifier, dropout off
      with MiniLM's tokenizer, and ViLT's image processor config (32-pixel images)
    train_reference.py --train JOBS.json  trains each job and writes its final weights

A job names its checkpoint, its examples (text, label, image path for ViLT), the batches of
example indices of each optimisation step, and the options; the weights go to `out`.
"""

import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, ViltConfig, ViltForQuestionAnswering,
                          ViltImageProcessor, get_scheduler)
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]


def make(out, minilm):
    torch.manual_seed(7)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2, **no_dropout))
    vilt = ViltForQuestionAnswering(ViltConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, image_size=32, patch_size=8,
        max_image_length=-1, num_labels=2, **no_dropout))
    for name, model in [("bert", bert), ("vilt", vilt)]:
        d = os.path.join(out, name)
        model.save_pretrained(d)
        for f in TOKENIZER_FILES:
            if os.path.exists(os.path.join(minilm, f)):
                shutil.copy(os.path.join(minilm, f), d)
    ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=32).save_pretrained(
        os.path.join(out, "vilt"))
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f)


def train(job):
    torch.manual_seed(0)
    ckpt = job["checkpoint"]
    vilt = job["kind"] == "vilt"
    model = (ViltForQuestionAnswering if vilt else AutoModelForSequenceClassification) \
        .from_pretrained(ckpt)
    model.train()
    tok = AutoTokenizer.from_pretrained(ckpt)
    proc = ViltImageProcessor.from_pretrained(ckpt) if vilt else None
    # the Trainer's groups: no weight decay for biases and LayerNorm weights
    decay = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    params = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": job["weight_decay"]},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=job["learning_rate"], betas=(0.9, 0.999), eps=1e-8,
                            foreach=False)
    total = len(job["batches"])
    warmup = math.ceil(job["warmup_ratio"] * total)
    sched = get_scheduler(job["lr_scheduler"], opt, num_warmup_steps=warmup,
                          num_training_steps=total)
    examples = job["examples"]
    from PIL import Image
    for batch in job["batches"]:
        rows = [examples[i] for i in batch]
        enc = tok([r["text"] for r in rows], padding=True, truncation=True,
                  max_length=job["max_length"], return_tensors="pt")
        inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=torch.zeros_like(enc["input_ids"]))
        if vilt:
            images = [Image.open(r["image"]).convert("RGB") for r in rows]
            pix = proc(images, return_tensors="pt")
            inputs.update(pixel_values=pix["pixel_values"], pixel_mask=pix["pixel_mask"])
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits, torch.tensor([r["label"] for r in rows]))
        loss.backward()
        if job["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), job["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, job["out"])


def main():
    if sys.argv[1] == "--train":
        with open(sys.argv[2]) as f:
            for job in json.load(f):
                train(job)
    else:
        make(sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    main()
