"""Reference fixtures for the text models, made with Hugging Face transformers.

usage: make_text_fixtures.py OUT_DIR MINILM_DIR

For each case, OUT_DIR/<case>/ gets
  checkpoint/          written by save_pretrained (config.json, model.safetensors, tokenizer files)
  inputs.safetensors   input_ids, attention_mask (and token_type_ids), with padded rows
  expected.safetensors the transformers outputs in eval mode, float32: last_hidden_state,
                       pooler_output (where the model has a pooler), logits (where it has a head)
and OUT_DIR/tokenization.json lists texts with the ids Hugging Face's tokenizers give them
(tokenizer folders relative to OUT_DIR, or absolute).
The Rust tests compare `modalbench forward` and the Rust tokenizers against these.
"""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
)

OUT, MINILM = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
NUM_PARAMETERS = {}

TEXTS = [
    "The striker scored a late goal.",
    "Él niño comió manzanas en Sevilla, ¿verdad?",
    "Quantum effects measured at the observatory!!",
    "unbelievably long words like antidisestablishmentarianism get split",
    "a",
    "Numbers 3.14 and 42, symbols #@% and émojis 😀 too",
]
PAIRS = [
    ("A man rides a horse.", "Someone is outdoors."),
    ("The market fell sharply today after the central bank raised interest rates again", "Stocks went down."),
]


def padded_inputs(vocab_size, pad_id, lengths, seq, types=True, low=5):
    batch = len(lengths)
    ids = torch.randint(low, vocab_size, (batch, seq))
    mask = torch.zeros(batch, seq, dtype=torch.long)
    token_types = torch.zeros(batch, seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad_id
        if types:
            token_types[i, n // 2 : n] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if types:
        out["token_type_ids"] = token_types
    return out


def write_case(name, model, inputs, base=None, tokenizer_dir=None, legacy_names=False, layout="safetensors"):
    """Saves the model and its reference outputs. `base` is the base model inside a task
    model (its last hidden state and pooler are reported too)."""
    case = os.path.join(OUT, name)
    ckpt = os.path.join(case, "checkpoint")
    os.makedirs(case, exist_ok=True)
    model.eval()
    if not legacy_names:
        NUM_PARAMETERS[name] = model.num_parameters()
    if layout == "sharded":
        model.save_pretrained(ckpt, max_shard_size="20KB")
        assert os.path.exists(os.path.join(ckpt, "model.safetensors.index.json")), "no shards written"
    else:
        model.save_pretrained(ckpt)
    weights = os.path.join(ckpt, "model.safetensors")
    if layout == "bin":
        # as checkpoints from before safetensors are published: torch.save of the state dict
        os.remove(weights)
        torch.save(model.state_dict(), os.path.join(ckpt, "pytorch_model.bin"))
    assert layout != "safetensors" or os.path.exists(weights), "save_pretrained wrote no model.safetensors"
    if legacy_names:
        # as TensorFlow-era checkpoints name LayerNorm parameters
        tensors = load_file(weights)
        renamed = {
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in tensors.items()
        }
        save_file(renamed, weights, metadata={"format": "pt"})
    if tokenizer_dir:
        for f in os.listdir(tokenizer_dir):
            shutil.copy(os.path.join(tokenizer_dir, f), ckpt)
    with torch.no_grad():
        if base is None:
            o = model(**inputs)
            expected = {"last_hidden_state": o.last_hidden_state}
            if getattr(o, "pooler_output", None) is not None:
                expected["pooler_output"] = o.pooler_output
        else:
            inner = getattr(model, base)
            o = inner(**inputs)
            expected = {"last_hidden_state": o.last_hidden_state}
            if getattr(o, "pooler_output", None) is not None:
                expected["pooler_output"] = o.pooler_output
            if hasattr(model, "classifier"):
                expected["logits"] = model(**inputs).logits
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in expected.items()}, os.path.join(case, "expected.safetensors"))


def bert_config(**kw):
    base = dict(vocab_size=120, max_position_embeddings=40, type_vocab_size=2, hidden_dropout_prob=0.1,
                attention_probs_dropout_prob=0.1)
    base.update(kw)
    return BertConfig(**base)


def roberta_config(**kw):
    base = dict(vocab_size=150, max_position_embeddings=42, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    base.update(kw)
    return RobertaConfig(**base)


def cased_wordpiece_dir(path):
    """A BETO-like checkpoint tokenizer: a cased WordPiece vocab.txt and tokenizer_config.json,
    no tokenizer.json."""
    os.makedirs(path, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789áéíóúñüÁÉÍÓÚÑ.,!?¿¡'\"-:;()#@%")
    words = ["El", "el", "niño", "comió", "manzanas", "en", "Sevilla", "verdad", "The", "the", "goal", "late",
             "striker", "scored", "a", "A", "man", "rides", "horse", "Someone", "is", "outdoors", "market"]
    vocab = specials + chars + ["##" + c for c in chars if c.isalnum()] + words
    seen, unique = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(unique) + "\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": False}, f)
    return len(unique)


def bpe_dir(path):
    """A RoBERTa tokenizer trained here: byte-level BPE vocab.json + merges.txt, no
    tokenizer.json."""
    os.makedirs(path, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = TEXTS + [t for p in PAIRS for t in p] + ["the market, the goal, the horse and the striker"] * 20
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(path)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "RobertaTokenizer"}, f)
    return bpe.get_vocab_size()


def tokenization_cases(tokenizer, max_length):
    cases = []
    for text in TEXTS:
        enc = tokenizer(text, truncation=True, max_length=max_length)
        cases.append({"text": text, "pair": None, "ids": enc["input_ids"],
                      "type_ids": enc.get("token_type_ids", [0] * len(enc["input_ids"]))})
    for a, b in PAIRS:
        enc = tokenizer(a, b, truncation=True, max_length=max_length)
        cases.append({"text": a, "pair": b, "ids": enc["input_ids"],
                      "type_ids": enc.get("token_type_ids", [0] * len(enc["input_ids"]))})
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    scratch = os.path.join(OUT, "_tokenizers")
    cased_vocab = cased_wordpiece_dir(os.path.join(scratch, "cased-wordpiece"))
    bpe_vocab = bpe_dir(os.path.join(scratch, "bpe"))

    # BERT base model: hidden size not a power of two, an odd head count, one layer
    c = bert_config(hidden_size=36, num_attention_heads=3, num_hidden_layers=1, intermediate_size=50)
    write_case("bert_base_h36_l1", BertModel(c), padded_inputs(c.vocab_size, 0, [11, 8, 5], 11))
    # BERT classifiers with 2 and 5 labels, three layers, other activations
    c = bert_config(hidden_size=60, num_attention_heads=5, num_hidden_layers=3, intermediate_size=70,
                    hidden_act="gelu_new", num_labels=2)
    write_case("bert_cls2_h60_l3", BertForSequenceClassification(c), padded_inputs(c.vocab_size, 0, [9, 9, 4], 9),
               base="bert")
    c = bert_config(vocab_size=cased_vocab, hidden_size=48, num_attention_heads=3, num_hidden_layers=3,
                    intermediate_size=64, hidden_act="relu", num_labels=5, classifier_dropout=0.2)
    write_case("bert_cls5_h48_l3", BertForSequenceClassification(c), padded_inputs(c.vocab_size, 0, [12, 7, 3], 12),
               base="bert", tokenizer_dir=os.path.join(scratch, "cased-wordpiece"))
    # a pre-training checkpoint (`bert.` prefix, `cls.` heads) with TensorFlow-era LayerNorm names
    c = bert_config(hidden_size=24, num_attention_heads=2, num_hidden_layers=2, intermediate_size=40)
    write_case("bert_pretraining_legacy", BertForPreTraining(c), padded_inputs(c.vocab_size, 0, [10, 6], 10),
               base="bert", legacy_names=True)
    # the other published weight layouts: a sharded safetensors index, a pytorch_model.bin
    c = bert_config(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37, num_labels=3)
    write_case("bert_sharded", BertForSequenceClassification(c), padded_inputs(c.vocab_size, 0, [7, 4], 7),
               base="bert", layout="sharded")
    c = bert_config(hidden_size=20, num_attention_heads=5, num_hidden_layers=1, intermediate_size=21)
    write_case("bert_pytorch_bin", BertModel(c), padded_inputs(c.vocab_size, 0, [6, 6, 2], 6), layout="bin")
    # RoBERTa: padding id 1, positions from padding_idx + 1, no token types
    c = roberta_config(hidden_size=40, num_attention_heads=5, num_hidden_layers=2, intermediate_size=64)
    write_case("roberta_base_h40_l2", RobertaModel(c), padded_inputs(c.vocab_size, 1, [10, 7, 2], 10, types=False))
    c = roberta_config(vocab_size=bpe_vocab, hidden_size=44, num_attention_heads=4, num_hidden_layers=3,
                       intermediate_size=52, num_labels=2)
    write_case("roberta_cls2_h44_l3", RobertaForSequenceClassification(c),
               padded_inputs(c.vocab_size, 1, [13, 13, 6], 13, types=False), base="roberta",
               tokenizer_dir=os.path.join(scratch, "bpe"))
    c = roberta_config(hidden_size=30, num_attention_heads=3, num_hidden_layers=1, intermediate_size=34, num_labels=5)
    write_case("roberta_cls5_h30_l1", RobertaForSequenceClassification(c),
               padded_inputs(c.vocab_size, 1, [8, 5], 8, types=False), base="roberta")

    # the real MiniLM-L6 on tokenized text
    tok = AutoTokenizer.from_pretrained(MINILM)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    model = BertModel.from_pretrained(MINILM)
    model.eval()
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        o = model(**inputs)
    case = os.path.join(OUT, "minilm")
    os.makedirs(case, exist_ok=True)
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case, "inputs.safetensors"))
    save_file({"last_hidden_state": o.last_hidden_state.contiguous(), "pooler_output": o.pooler_output.contiguous()},
              os.path.join(case, "expected.safetensors"))

    # tokenization: tokenizer.json (MiniLM), and tokenizers built from vocabulary files alone
    tokenization = [
        {"dir": os.path.abspath(MINILM), "model_type": "bert", "max_length": 16,
         "cases": tokenization_cases(AutoTokenizer.from_pretrained(MINILM), 16)},
        {"dir": "_tokenizers/cased-wordpiece", "model_type": "bert", "max_length": 16,
         "cases": tokenization_cases(AutoTokenizer.from_pretrained(os.path.join(scratch, "cased-wordpiece")), 16)},
        {"dir": "_tokenizers/bpe", "model_type": "roberta", "max_length": 16,
         "cases": tokenization_cases(AutoTokenizer.from_pretrained(os.path.join(scratch, "bpe")), 16)},
    ]
    with open(os.path.join(OUT, "tokenization.json"), "w") as f:
        json.dump(tokenization, f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "num_parameters.json"), "w") as f:
        json.dump(NUM_PARAMETERS, f)
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__}, f)


main()
