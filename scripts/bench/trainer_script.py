"""The alternative a researcher would write: fine-tune a checkpoint on a news-format dataset
(`train.csv`, `dev.csv` with `text` and `label`) with Hugging Face's `Trainer`, its defaults
and best practice (dynamic padding with `DataCollatorWithPadding`; the Trainer's fused AdamW,
linear schedule), evaluating the dev split after each epoch. `--pad-to 512` is the original
study's recipe instead: every text padded to 512 tokens.

    .venv/bin/python scripts/bench/trainer_script.py DATA_DIR MODEL_DIR --epochs 2 --batch 16 \\
        --lr 5e-5 --max-length 256 --seed 0 [--pad-to 512] [--threads 2]

Prints `dev_accuracy=` (after the last epoch) and `seconds=`, from the script's start (imports
included: a user pays them) to the end of training and evaluation.
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)


class Texts(torch.utils.data.Dataset):
    def __init__(self, enc, labels):
        self.enc, self.labels = enc, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.labels[i]
        return item


def read(path: Path):
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pad-to", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    train_x, train_y = read(args.data / "train.csv")
    dev_x, dev_y = read(args.data / "dev.csv")
    names = sorted(set(train_y))
    ids = {n: i for i, n in enumerate(names)}
    tok = AutoTokenizer.from_pretrained(args.model)
    max_length = args.pad_to or args.max_length
    padding = "max_length" if args.pad_to else False
    enc = lambda xs: tok(xs, truncation=True, max_length=max_length, padding=padding)  # noqa: E731
    train = Texts(enc(train_x), [ids[y] for y in train_y])
    dev = Texts(enc(dev_x), [ids[y] for y in dev_y])
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(names))
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=2 * args.batch, learning_rate=args.lr, warmup_steps=0.1,
            weight_decay=0.01, eval_strategy="epoch", save_strategy="no", logging_strategy="no",
            report_to=[], seed=args.seed, use_cpu=True, disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = Trainer(
            model=model, args=targs, train_dataset=train, eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tok),
            compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
        trainer.train()
        # the evaluation after the last epoch (evaluating again would count twice)
        acc = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h][-1]
    print(f"dev_accuracy={acc:.4f}")
    print(f"seconds={time.perf_counter() - START:.2f}")


if __name__ == "__main__":
    main()
