"""Shared by the training-step and evaluation sections: one model's step timed in modalbench
(`modalbench bench train-step`) and in PyTorch + transformers (`torch_step.py`), alternating,
with the model FLOPs per example counted by PyTorch's flop counter and the matrix-product peak
of this machine measured in the same run."""

from __future__ import annotations

from pathlib import Path

import harness

# (model, batch, sequence, timed steps per repetition at full size, in quick mode)
MODELS = [
    ("minilm-l6", 16, 128, 6, 2),
    ("clip-tiny", 16, 128, 40, 5),
    ("vilt-tiny", 16, 128, 40, 5),
    ("flava-tiny", 16, 128, 20, 5),
    ("fusion-mobilenet", 16, 128, 4, 2),
]
TORCH_STEP = str(Path(__file__).resolve().parent / "torch_step.py")


def bf16_native() -> bool:
    flags = Path("/proc/cpuinfo").read_text()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_peak(ctx: harness.Context, precision: str) -> float:
    out = harness.run([harness.PYTHON, TORCH_STEP, "--matmul-peak", "--threads", str(ctx.threads),
                       "--precision", precision])
    return harness.figure(out, "peak_gflops")


def flops_per_example(model: str, batch: int, seq: int, eval_: bool) -> float:
    cmd = [harness.PYTHON, TORCH_STEP, str(harness.ROOT / "models" / model), "--batch", str(batch),
           "--seq", str(seq), "--steps", "1", "--warmup", "0", "--flops"]
    return harness.figure(harness.run(cmd + (["--eval"] if eval_ else [])), "flops_per_example")


def commands(model: str, batch: int, seq: int, steps: int, threads: int, precision: str,
             eval_: bool) -> tuple[list[str], list[str]]:
    mb = [harness.binary(), "bench", "train-step", "--model", model, "--batch-size", str(batch),
          "--seq-len", str(seq), "--steps", str(steps), "--threads", str(threads),
          "--mixed-precision", precision, "--models-dir", str(harness.ROOT / "models")]
    pt = [harness.PYTHON, TORCH_STEP, str(harness.ROOT / "models" / model), "--batch", str(batch),
          "--seq", str(seq), "--steps", str(steps), "--threads", str(threads), "--precision", precision]
    if eval_:
        mb.append("--eval")
        pt.append("--eval")
    return mb, pt


def compare(ctx: harness.Context, model: str, batch: int, seq: int, steps: int, precision: str,
            eval_: bool) -> dict[str, harness.Stats]:
    mb, pt = commands(model, batch, seq, steps, ctx.threads, precision, eval_)
    key = "eval_samples_per_s" if eval_ else "step_samples_per_s"
    return harness.alternate({
        "modalbench": lambda: harness.figure(harness.run(mb), key),
        "pytorch": lambda: harness.figure(harness.run(pt), "samples_per_s"),
    }, ctx.reps, log=ctx.log)


def section(ctx: harness.Context, eval_: bool) -> harness.Section:
    what = "evaluation" if eval_ else "training"
    peaks = {"no": matmul_peak(ctx, "no")}
    precisions = ["no"]
    if bf16_native():
        peaks["bf16"] = matmul_peak(ctx, "bf16")
        precisions.append("bf16")
    ctx.log(f"matmul peak: {peaks}")
    rows, results = [], {}
    models = MODELS[:2] if ctx.quick else MODELS
    for model, batch, seq, steps, quick_steps in models:
        flops = flops_per_example(model, batch, seq, eval_)
        for precision in precisions:
            ctx.log(f"{model} {what} {precision}")
            s = compare(ctx, model, batch, seq, quick_steps if ctx.quick else steps, precision, eval_)
            r = harness.ratio(s["modalbench"], s["pytorch"])
            results[(model, precision)] = (s, r)
            frac = flops * s["modalbench"].median / (peaks[precision] * 1e9)
            frac_pt = flops * s["pytorch"].median / (peaks[precision] * 1e9)
            rows.append([model, "fp32" if precision == "no" else precision, s["modalbench"].fmt(),
                         s["pytorch"].fmt(), r.fmt(2), f"{flops / 1e9:.3g}",
                         f"{100 * frac:.0f}% / {100 * frac_pt:.0f}%"])
    if not bf16_native():
        rows.append(["every model", "bf16", "not measured", "not measured", "–", "–",
                     "this CPU has no avx512_bf16 / amx_bf16"])
    header = ["model", "precision", "modalbench samples/s", "PyTorch samples/s", "ratio",
              "GFLOPs/example", "matmul peak used (modalbench / PyTorch)"]
    mb, pt = commands("MODEL", 16, 128, 6, ctx.threads, "no", eval_)
    cmds = [f"make bench ARGS='--only {'evaluation' if eval_ else 'train_step'}'   # runs, alternating:",
            " ".join(mb[1:]).replace(str(harness.ROOT) + "/", ""),
            " ".join(["python", *pt[1:]]).replace(str(harness.ROOT) + "/", "")]
    minilm, r = results[("minilm-l6", "no")]
    flops = flops_per_example("minilm-l6", 16, 128, eval_)
    frac = flops * minilm["modalbench"].median / (peaks["no"] * 1e9)
    targets = []
    if eval_:
        targets.append(("fp32 at least PyTorch's speed (minilm-l6)", r.median >= 1.0, f"{r.median:.2f}×"))
        if "bf16" in peaks:
            b = results[("minilm-l6", "bf16")][0]["modalbench"].median / minilm["modalbench"].median
            targets.append(("bf16 ≥ 2× fp32 (minilm-l6)", b >= 2.0, f"{b:.2f}×"))
        else:
            targets.append(("bf16 ≥ 2× fp32", None, "no native bf16 on this CPU"))
    else:
        targets.append(("≥ 1.2× PyTorch at fp32 (minilm-l6)", r.median >= 1.2, f"{r.median:.2f}×"))
        if "bf16" in peaks:
            rb = results[("minilm-l6", "bf16")][1]
            targets.append(("≥ 1.2× PyTorch at bf16 (minilm-l6)", rb.median >= 1.2, f"{rb.median:.2f}×"))
        else:
            targets.append(("≥ 1.2× PyTorch at bf16", None, "no native bf16 on this CPU"))
        targets.append(("fp32 step ≥ 75% of the matmul peak (minilm-l6)", frac >= 0.75,
                        f"{100 * frac:.0f}% of {peaks['no']:.0f} GFLOP/s"))
    notes = (f"Batch 16, sequence 128 (capped at the model's longest text), random token ids, every "
             f"token attended; text+image models get a random 224×224 picture per example through "
             f"their own preprocessing. {ctx.threads} CPU threads on both sides; each figure is the "
             f"median (min–max) of {ctx.reps} alternating repetitions, each a fresh process timing "
             f"its steps after 2 warm-up steps. Matrix-product peak of this machine measured in the "
             f"same run: {peaks['no']:.0f} GFLOP/s fp32"
             + (f", {peaks['bf16']:.0f} GFLOP/s bf16" if "bf16" in peaks else "")
             + ". FLOPs per example are counted by `torch.utils.flop_counter` over one step of the "
               "PyTorch model (matrix products, convolutions, attention; "
             + ("forward only)." if eval_ else "forward and backward)."))
    if not eval_:
        notes += (" The PyTorch side is the Trainer's step: cross-entropy, `clip_grad_norm_(1.0)`, "
                  "`torch.optim.AdamW(fused=True)` (the Trainer's default optimiser on PyTorch ≥ "
                  "2.8) with its decay groups, `zero_grad(set_to_none=True)`.")
    return harness.Section(
        key="evaluation" if eval_ else "train_step",
        title=("Evaluation step" if eval_ else "Fine-tune step") + " against PyTorch + transformers",
        commands=cmds, header=header, rows=rows, notes=notes, targets=targets)
