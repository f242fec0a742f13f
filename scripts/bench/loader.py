"""Section 7: image loading at 224 px: JPEG files decoded, resized (shortest edge to 224,
bicubic), centre-cropped, rescaled and normalised into a batch, by modalbench's loader
(`modalbench bench loader`) and by the Hugging Face image processor in Python on the same
files (its PIL/NumPy processor and its torchvision-backed "fast" one)."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import harness

HF_IMAGES = str(Path(__file__).resolve().parent / "hf_images.py")
PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 224},
    "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def make_images(folder: Path, n: int) -> list[Path]:
    """Photo-sized JPEGs (640×480 and 500×375, quality 90) with smooth gradients and noise."""
    from PIL import Image, ImageFilter

    rng = random.Random(0)
    (folder / "img").mkdir(parents=True)
    paths = []
    for i in range(n):
        w, h = (640, 480) if i % 2 == 0 else (500, 375)
        small = Image.new("RGB", (16, 12))
        small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(16 * 12)])
        img = small.resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        noise = Image.effect_noise((w, h), 24).convert("RGB")
        img = Image.blend(img, noise, 0.15)
        p = folder / "img" / f"{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    # a dataset folder the service recognises (Hateful Memes layout), all images in train
    lines = [json.dumps({"id": i, "img": f"img/{p.name}", "label": i % 2, "text": "a picture"})
             for i, p in enumerate(paths)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    for split in ("dev", "test"):
        (folder / f"{split}.jsonl").write_text(lines[0] + "\n")
    return paths


def run(ctx: harness.Context) -> harness.Section:
    tmp = Path(tempfile.mkdtemp(prefix="modalbench-loader-"))
    try:
        n = 128 if ctx.quick else 1024
        paths = make_images(tmp / "images", n)
        models = tmp / "models"
        (models / "clip-224").mkdir(parents=True)
        (models / "clip-224" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
        mb = [harness.binary(), "bench", "loader", "--dataset", str(tmp / "images"), "--model", "clip-224",
              "--batch-size", "32", "--models-dir", str(models)]
        env1 = {**os.environ, "RAYON_NUM_THREADS": "1"}
        hf = [harness.PYTHON, HF_IMAGES, str(models / "clip-224"), *map(str, paths), "--batch", "32"]
        sides = {
            f"modalbench, {os.cpu_count()} threads": lambda: harness.figure(harness.run(mb), "decode_per_s"),
            "modalbench, 1 thread": lambda: harness.figure(harness.run(mb, env=env1), "decode_per_s"),
            "Hugging Face CLIPImageProcessor (PIL)": lambda: harness.figure(harness.run(hf), "images_per_s"),
            "Hugging Face CLIPImageProcessorFast (torchvision)": lambda: harness.figure(harness.run(hf + ["--fast"]), "images_per_s"),
        }
        stats = harness.alternate(sides, ctx.reps, log=ctx.log)
        cache = harness.run(mb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = stats["Hugging Face CLIPImageProcessor (PIL)"]
    rows = [[name, s.fmt(0), f"{harness.ratio(s, base).median:.2f}×"] for name, s in stats.items()]
    rows.append(["modalbench, from its disk cache (normalise only)",
                 f"{harness.figure(cache, 'disk_cache_per_s'):,.0f}", "–"])
    rows.append(["modalbench, from its memory cache (normalise only)",
                 f"{harness.figure(cache, 'memory_cache_per_s'):,.0f}", "–"])
    one = harness.ratio(stats["modalbench, 1 thread"], base).median
    notes = (f"{n} JPEG files (640×480 and 500×375, quality 90), batches of 32, each image decoded, "
             "resized so its shorter side is 224 (bicubic), centre-cropped to 224×224, rescaled and "
             "normalised into a float32 batch: CLIP's preprocessing. modalbench decodes a batch's images "
             "on its rayon threads (the worker gives them the run's CPU threads); the Hugging Face "
             "processors run in the calling Python thread, as in a DataLoader without workers. "
             f"Single-threaded, modalbench's loader is {one:.2f}× the PIL processor. The caches are "
             "modalbench's: resized 8-bit images kept on disk or in memory after the first epoch.")
    return harness.Section(
        key="loader", title="Image loading at 224 px against the Hugging Face image processors",
        commands=["make bench ARGS='--only loader'",
                  "modalbench bench loader --dataset DIR --model clip-224 --batch-size 32",
                  "python scripts/bench/hf_images.py PREPROCESSOR_DIR IMAGES... --batch 32 [--fast]"],
        header=["loader", "images/s (median, min–max)", "× the PIL processor"], rows=rows, notes=notes)
