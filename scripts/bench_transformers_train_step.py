"""The reference for `modalbench bench train-step`: the same forward+backward step of
MiniLM-L6 with a 2-label head in Hugging Face transformers (PyTorch eager, 2 threads).

usage: .venv/bin/python scripts/bench_transformers_train_step.py [MODEL_DIR] [BATCH] [SEQ] [STEPS]
(needs the test requirements: `make test` installs them)
"""
import sys
import time

import torch
import transformers
from transformers import BertForSequenceClassification

model_dir = sys.argv[1] if len(sys.argv) > 1 else "models/minilm-l6"
batch, seq, steps = (int(a) for a in (sys.argv[2:5] + ["16", "128", "10"][len(sys.argv[2:5]):]))
torch.manual_seed(0)
torch.set_num_threads(2)
model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
model.train()
ids = torch.randint(5, model.config.vocab_size, (batch, seq))
mask = torch.ones_like(ids)
labels = torch.randint(2, (batch,))


def step():
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    model.zero_grad()
    out.loss.backward()


for _ in range(2):
    step()
start = time.time()
for _ in range(steps):
    step()
secs = time.time() - start
print(f"transformers {transformers.__version__} forward+backward: {batch * steps / secs:.1f} samples/s "
      f"({secs / steps:.3f} s/step), attention {model.config._attn_implementation}")
