"""The Python side of the loader benchmark: the Hugging Face image processor of a
`preprocessor_config.json` over the same image files, in batches, as a training script feeds a
model (PIL decode, then the processor's resize, crop, rescale and normalise to a tensor).

    .venv/bin/python scripts/bench/hf_images.py PREPROCESSOR_DIR IMAGE... [--batch 32] [--fast]

Prints `images_per_s=`.
"""

import argparse
import time

from PIL import Image
from transformers import AutoImageProcessor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("processor")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fast", action="store_true", help="the torchvision-backed processor")
    args = ap.parse_args()
    proc = AutoImageProcessor.from_pretrained(args.processor, use_fast=args.fast)
    t = time.perf_counter()
    for i in range(0, len(args.images), args.batch):
        imgs = [Image.open(p).convert("RGB") for p in args.images[i:i + args.batch]]
        out = proc(images=imgs, return_tensors="pt")["pixel_values"]
        assert out.shape[0] == len(imgs)
    print(f"images_per_s={len(args.images) / (time.perf_counter() - t):.1f}")
    print(f"shape={tuple(out.shape[1:])}")


if __name__ == "__main__":
    main()
