"""Reference outputs of torchvision's MobileNetV2 with its ImageNet weights.

usage: mobilenet_reference.py OUT_DIR MINILM_DIR
The weights are the setup step's `mobilenet-v2/mobilenet_v2-b0353104.pth`, beside MINILM_DIR.

Writes five 256x192 test pictures to OUT_DIR/images/, and OUT_DIR/expected.safetensors:
- pixel_values: the pictures resized to 224x224 with Pillow's bilinear filter, scaled to [0, 1]
  and normalised with ImageNet's mean and std (torchvision's preprocessing without the crop);
- logits: torchvision's `mobilenet_v2()` in eval mode on those pixels, [5, 1000];
- train_features: the pooled 1280 features in train mode (batch statistics in batch norm).
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.numpy import save_file

OUT, MINILM = sys.argv[1], sys.argv[2]
WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(MINILM)), "mobilenet-v2", "mobilenet_v2-b0353104.pth")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
rng = np.random.default_rng(0)


def picture(kind, w=256, h=192):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 0:  # an orange disc on a blue sky
        img = np.stack([40 + 0 * x, 90 + 60 * y / h, 200 + 0 * x], axis=-1)
        img[(x - w / 2) ** 2 + (y - h / 2) ** 2 < 50**2] = [240, 140, 20]
    elif kind == 1:  # vertical stripes
        v = 255.0 * (np.sin(x / 4.0) > 0)
        img = np.stack([v, v, v], axis=-1)
    elif kind == 2:  # a checkerboard
        v = 255.0 * (((x // 24) + (y // 24)) % 2)
        img = np.stack([v, 0.5 * v, 0 * v + 30], axis=-1)
    elif kind == 3:  # smooth colour gradients
        img = np.stack([255 * x / w, 255 * y / h, 255 * (1 - x / w)], axis=-1)
    else:  # green noise over brown
        img = np.stack([110 + 0 * x, 80 + 0 * x, 40 + 0 * x], axis=-1)
        img[..., 1] += rng.normal(60, 40, (h, w))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
pixels = []
for i in range(5):
    img = picture(i)
    img.save(os.path.join(OUT, "images", f"{i}.png"))
    a = np.asarray(img.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    pixels.append(((a - MEAN) / STD).transpose(2, 0, 1))
pixel_values = torch.from_numpy(np.ascontiguousarray(np.stack(pixels)))

torch.manual_seed(0)
model = torchvision.models.mobilenet_v2()
model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
model.eval()
with torch.no_grad():
    logits = model(pixel_values)
    model.train()
    f = model.features(pixel_values)
    train_features = torch.nn.functional.adaptive_avg_pool2d(f, (1, 1)).flatten(1)

save_file(
    {
        "pixel_values": pixel_values.numpy(),
        "logits": logits.numpy(),
        "train_features": train_features.numpy(),
    },
    os.path.join(OUT, "expected.safetensors"),
)
with open(os.path.join(OUT, "versions.json"), "w") as fh:
    json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__}, fh)
