"""Reference pixel values from Hugging Face's PIL-backed image processors.

usage: make_image_fixtures.py OUT_DIR MINILM_DIR   (the second argument is unused)

Writes test images of several sizes and modes to OUT_DIR/images/, and for each processor
configuration OUT_DIR/<case>.json (the preprocessor config as save_pretrained writes it, and the
image files) and OUT_DIR/<case>.safetensors (pixel_values, and pixel_mask where the processor
pads), as the processor computes them for that list of images.
"""

import json
import os
import sys

import numpy as np
import transformers
from PIL import Image
from safetensors.numpy import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.flava.image_processing_pil_flava import FlavaImageProcessorPil
from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

OUT = sys.argv[1]
rng = np.random.default_rng(0)


def picture(w, h):
    """Smooth gradients with shapes and some noise: the content a resize kernel sees in photos."""
    y, x = np.mgrid[0:h, 0:w]
    r = 127 + 120 * np.sin(x / (w / 6.0))
    g = 255.0 * y / max(h - 1, 1)
    b = 255.0 * ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    files = []
    for name, (w, h), mode in [
        ("landscape.png", (300, 200), "RGB"),
        ("portrait.jpg", (97, 131), "RGB"),
        ("square.png", (64, 64), "RGB"),
        ("alpha.png", (150, 90), "RGBA"),
        ("gray.jpg", (120, 160), "L"),
        ("tiny.png", (20, 12), "RGB"),
    ]:
        img = Image.fromarray(picture(w, h))
        if mode == "RGBA":
            alpha = Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8))
            img = img.convert("RGBA")
            img.putalpha(alpha)
        elif mode == "L":
            img = img.convert("L")
        path = os.path.join(OUT, "images", name)
        img.save(path, quality=92) if name.endswith(".jpg") else img.save(path)
        files.append(path)
    return files


def main():
    files = write_images()
    cases = {
        "clip_224": CLIPImageProcessorPil(),
        "clip_bilinear_crop_100": CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 100, "width": 90}, resample=2),
        "flava_224": FlavaImageProcessorPil(),
        "vilt_384": ViltImageProcessorPil(),
        "vilt_64_divisor_16": ViltImageProcessorPil(size={"shortest_edge": 64}, size_divisor=16),
    }
    for name, proc in cases.items():
        config = json.loads(proc.to_json_string())
        # the Rust pipeline always converts to RGB (as CLIP's do_convert_rgb does: alpha dropped,
        # gray replicated); FLAVA's and ViLT's processors expect RGB input
        images = [Image.open(f).convert("RGB") for f in files]
        out = proc(images, return_tensors="np")
        tensors = {"pixel_values": out["pixel_values"].astype(np.float32)}
        if "pixel_mask" in out:
            tensors["pixel_mask"] = out["pixel_mask"].astype(np.int64)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(OUT, f"{name}.safetensors"))
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump({"config": config, "images": [os.path.relpath(p, OUT) for p in files]}, f, indent=1)
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "pillow": Image.__version__}, f)


main()
