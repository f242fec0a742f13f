"""The PyTorch side of the step benchmarks: the same checkpoint as `modalbench bench train-step`
in PyTorch + transformers eager, with the Trainer's step (forward, cross-entropy, backward,
`clip_grad_norm_(1.0)`, `torch.optim.AdamW(fused=True)` with the Trainer's decay groups,
`zero_grad(set_to_none=True)`), or an evaluation step under `torch.no_grad()`.

    .venv/bin/python scripts/bench/torch_step.py MODEL_DIR [--batch 16] [--seq 128] [--steps 6]
        [--threads 2] [--precision no|bf16|fp16] [--device cpu|cuda] [--eval] [--flops]
    .venv/bin/python scripts/bench/torch_step.py --matmul-peak [--threads 2] [--precision no|bf16|fp16]
        [--device cpu|cuda]

Prints `samples_per_s=`, `cpu_s_per_step=` (process CPU seconds per step), and with `--flops`
`flops_per_example=` (counted by `torch.utils.flop_counter` over one step: matrix products,
convolutions and attention, forward and backward). `--matmul-peak` prints `peak_gflops=`, the
best of square matrix products at sizes a transformer layer uses (on CUDA, larger ones).
On CUDA, float16 autocast trains with `torch.amp.GradScaler`, as the Trainer does.

The text+image heads are built here as modalbench builds them (ours where Hugging Face has
none: CLIP's MLP over [t, i, t·i, t−i], FLAVA with ViLT's VQA head, the Concat-BERT fusion of a
BERT encoder and torchvision's MobileNetV2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def build(model_dir: Path) -> tuple[nn.Module, dict]:
    """The model (2 labels) and what its inputs look like."""
    import transformers as tf

    config = json.loads((model_dir / "config.json").read_text())
    kind = config.get("model_type")
    if kind in ("bert", "roberta"):
        m = tf.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        return TextOnly(m), {"vocab": m.config.vocab_size, "image": None}
    if kind == "vilt":
        m = tf.ViltForQuestionAnswering.from_pretrained(model_dir, num_labels=2,
                                                         ignore_mismatched_sizes=True)
        return Vilt(m), {"vocab": m.config.vocab_size, "image": image_size(model_dir), "mask": True,
                         "max_text": m.config.max_position_embeddings}
    if kind == "clip":
        m = tf.CLIPModel.from_pretrained(model_dir)
        return Clip(m), {"vocab": m.config.text_config.vocab_size, "image": image_size(model_dir),
                         "max_text": m.config.text_config.max_position_embeddings}
    if kind == "flava":
        m = tf.FlavaModel.from_pretrained(model_dir)
        return Flava(m), {"vocab": m.config.text_config.vocab_size, "image": image_size(model_dir),
                          "max_text": m.config.text_config.max_position_embeddings}
    if kind == "modalbench-fusion":
        return Fusion(model_dir, config), {"vocab": config["text_config"]["vocab_size"],
                                           "image": image_size(model_dir)}
    raise SystemExit(f"{model_dir}: no PyTorch reference for model_type {kind!r}")


def image_size(model_dir: Path) -> int:
    p = json.loads((model_dir / "preprocessor_config.json").read_text())
    size = p.get("crop_size") or p.get("size") or {}
    return int(size.get("height") or size.get("shortest_edge") or 224)


class TextOnly(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids, mask, pixels, pixel_mask):
        return self.m(input_ids=ids, attention_mask=mask).logits


class Vilt(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids, mask, pixels, pixel_mask):
        return self.m(input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=pixel_mask).logits


class Clip(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        p = m.config.projection_dim
        self.classifier = nn.Sequential(nn.Linear(4 * p, p), nn.ReLU(), nn.Dropout(0.1), nn.Linear(p, 2))

    def forward(self, ids, mask, pixels, pixel_mask):
        out = self.m(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        t, i = out.text_embeds, out.image_embeds
        return self.classifier(torch.cat([t, i, t * i, t - i], -1))


class Flava(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        h = m.config.multimodal_config.hidden_size
        self.classifier = nn.Sequential(nn.Linear(h, 2 * h), nn.LayerNorm(2 * h), nn.GELU(), nn.Linear(2 * h, 2))

    def forward(self, ids, mask, pixels, pixel_mask):
        out = self.m(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        return self.classifier(out.multimodal_output.pooler_output)


class Fusion(nn.Module):
    def __init__(self, model_dir: Path, config: dict):
        super().__init__()
        import torchvision
        import transformers as tf

        self.text = tf.BertModel(tf.BertConfig(**config["text_config"]))
        self.vision = torchvision.models.mobilenet_v2(weights=None).features
        hidden = config.get("classifier_hidden_size", 256)
        self.classifier = nn.Sequential(nn.Linear(self.text.config.hidden_size + 1280, hidden), nn.ReLU(),
                                        nn.Dropout(config.get("classifier_dropout", 0.1)), nn.Linear(hidden, 2))
        self.dropout = nn.Dropout(config.get("classifier_dropout", 0.1))

    def forward(self, ids, mask, pixels, pixel_mask):
        pooled = self.text(input_ids=ids, attention_mask=mask).pooler_output
        image = F.adaptive_avg_pool2d(self.vision(pixels), 1).flatten(1)
        return self.classifier(torch.cat([self.dropout(pooled), self.dropout(image)], 1))


def inputs(spec: dict, batch: int, seq: int) -> tuple:
    seq = min(seq, spec.get("max_text", seq))
    ids = torch.randint(5, spec["vocab"], (batch, seq))
    mask = torch.ones_like(ids)
    pixels = pixel_mask = None
    if spec["image"]:
        s = spec["image"]
        pixels = torch.randn(batch, 3, s, s)
        if spec.get("mask"):
            pixel_mask = torch.ones(batch, s, s, dtype=torch.long)
    return ids, mask, pixels, pixel_mask


def decay_groups(model: nn.Module) -> list[dict]:
    """The Trainer's groups: no decay for biases and LayerNorm weights."""
    decay, no_decay = [], []
    norms = tuple(m for m in (nn.LayerNorm, nn.BatchNorm2d))
    no_decay_names = set()
    for mod_name, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            if isinstance(mod, norms) or pname.endswith("bias"):
                no_decay_names.add(full)
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in no_decay_names else decay).append(p)
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    best = 0.0
    sizes, reps = ((4096, 8192), 20) if device.startswith("cuda") else ((1024, 1536, 2048), 5)
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        for _ in range(3):
            a @ b
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval", action="store_true")
    ap.add_argument("--flops", action="store_true")
    ap.add_argument("--matmul-peak", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision, torch.float32)
    device = args.device
    if args.matmul_peak:
        print(f"peak_gflops={matmul_peak(device, dtype):.1f}")
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model, spec = build(args.model_dir)
    model.to(device)
    ids, mask, pixels, pixel_mask = (None if t is None else t.to(device)
                                     for t in inputs(spec, args.batch, args.seq))
    labels = torch.randint(2, (args.batch,)).to(device)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    autocast = lambda: torch.autocast(kind, dtype=dtype, enabled=args.precision != "no")  # noqa: E731
    scaler = torch.amp.GradScaler(kind, enabled=args.precision == "fp16")
    kept = []
    if args.eval:
        model.eval()

        def step():
            # the probabilities stay on the device until the end, as the Trainer's evaluation
            # loop gathers them
            with torch.no_grad(), autocast():
                kept.append(model(ids, mask, pixels, pixel_mask).float().softmax(-1))
    else:
        model.train()
        opt = torch.optim.AdamW(decay_groups(model), lr=2e-5, fused=True)

        def step():
            with autocast():
                logits = model(ids, mask, pixels, pixel_mask)
            loss = F.cross_entropy(logits.float(), labels)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            loss.item()

    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        print(f"flops_per_example={counter.get_total_flops() / args.batch:.6g}")
    for _ in range(args.warmup):
        step()
    sync(device)
    if kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = time.perf_counter(), time.process_time()
    kept.clear()
    for _ in range(args.steps):
        step()
    if kept:
        torch.cat(kept).cpu()
    sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if kind == "cuda":
        print(f"gpu_peak_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}")
    print(f"samples_per_s={args.batch * args.steps / wall:.3f}")
    print(f"cpu_s_per_step={cpu / args.steps:.4f}")


if __name__ == "__main__":
    main()
