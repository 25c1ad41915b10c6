"""A BERT-style sentence encoder built from ``transformers``' model classes (no hub
download) and trained in code on a made-up language, for the transformer compression
tests and benchmark: three inputs (``input_ids``, ``attention_mask``, ``token_type_ids``),
a sequence axis left free, and a mean-pooled embedding out.

The language: sentences drawn from a fixed random bigram chain over a Zipf-distributed
vocabulary, two segments per example, padded to a length. Training has two stages,
as a sentence encoder's does: masked-token prediction (BERT's own), which trains every
layer and the embeddings and grows the few large-magnitude channels that make trained
transformers hard to quantise; then contrastive learning of the pooled embedding (SimCSE:
two dropout views of a sentence pulled together, the batch's other sentences pushed away),
without which mean pooling gives nearly the same vector for every sentence and a cosine
to the fp32 embedding would measure nothing. torch and transformers are imported only when
used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST_WORD = 4


@dataclass(frozen=True)
class EncoderShape:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    intermediate: int = 128
    vocab: int = 1000
    max_len: int = 128


# a MiniLM-L6-H384-sized encoder (22.7M parameters, half of them the embeddings)
BENCH_ENCODER = EncoderShape(
    layers=6, hidden=384, heads=6, intermediate=1536, vocab=30522, max_len=128
)


def build_encoder(shape: EncoderShape = EncoderShape(), seed: int = 0) -> Any:  # nn.Module
    """An untrained encoder: BertModel without a pooler, mean pooling over the mask, and
    an MLM head (``mlm``) used only for training."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_len,
        type_vocab_size=2,
    )
    # eager attention exports to plain ONNX ops that the fusions recognise
    config._attn_implementation = "eager"

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config, add_pooling_layer=False)
            self.mlm = torch.nn.Linear(shape.hidden, shape.vocab)

        def hidden_states(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.hidden_states(input_ids, attention_mask, token_type_ids)
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    return SentenceEncoder().eval()


def made_up_sentences(
    rows: int, seq: int, vocab: int, seed: int = 0, language_seed: int = 1234
) -> dict[str, np.ndarray]:
    """``rows`` examples of the made-up language, padded to ``seq``: two segments each,
    ``[CLS] a… [SEP] b… [SEP]``, of random lengths. The language (its bigram chain) is
    fixed by ``language_seed``; ``seed`` draws the examples."""
    lang = np.random.default_rng(language_seed)
    words = vocab - FIRST_WORD
    zipf = 1.0 / np.arange(1, words + 1) ** 1.1
    zipf /= zipf.sum()
    # each word has 8 likely successors (75% of the time) and otherwise any word by Zipf
    successors = lang.choice(words, size=(words, 8), p=zipf)
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, seq), np.int64)
    types = np.zeros((rows, seq), np.int64)
    mask = np.zeros((rows, seq), np.int64)
    for r in range(rows):
        length = int(rng.integers(max(6, seq // 4), seq + 1))
        cut = int(rng.integers(2, length - 2))
        tokens = [CLS]
        word = int(rng.choice(words, p=zipf))
        for pos in range(1, length - 1):
            if pos == cut:
                tokens.append(SEP)
                continue
            follow = rng.random() < 0.75
            word = int(successors[word, rng.integers(8)] if follow else rng.choice(words, p=zipf))
            tokens.append(FIRST_WORD + word)
        tokens.append(SEP)
        ids[r, :length] = tokens
        types[r, cut + 1 : length] = 1
        mask[r, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def train_encoder(
    shape: EncoderShape = EncoderShape(),
    *,
    steps: int = 60,
    batch: int = 32,
    seq: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    cache: Path | None = None,
    progress: Any = None,
) -> Any:  # nn.Module
    """The encoder trained ``steps`` steps of masked-token prediction. With ``cache``, the
    weights are read from there when present and written there after training."""
    import torch
    import torch.nn.functional as F

    model = build_encoder(shape, seed)
    if _load_cached(model, cache):
        return model
    data = {
        k: torch.from_numpy(v)
        for k, v in made_up_sentences(steps * batch, seq, shape.vocab, seed).items()
    }
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        ids, mask, types = (
            data["input_ids"][rows],
            data["attention_mask"][rows],
            data["token_type_ids"][rows],
        )
        chosen = (torch.rand(ids.shape, generator=generator) < 0.15) & (ids >= FIRST_WORD)
        masked = ids.masked_fill(chosen, MASK)
        h = model.hidden_states(masked, mask, types)
        loss = F.cross_entropy(model.mlm(h[chosen]), ids[chosen])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, steps, float(loss.detach()))
    return _saved(model, cache)


def contrast_encoder(
    model: Any,
    *,
    steps: int = 30,
    batch: int = 32,
    seq: int = 32,
    lr: float = 3e-5,
    temperature: float = 0.05,
    seed: int = 1,
    cache: Path | None = None,
    progress: Any = None,
) -> Any:  # nn.Module
    """``model`` trained ``steps`` steps of unsupervised SimCSE on made-up sentences: each
    sentence's two dropout views are each other's positives, the batch's other sentences
    the negatives (InfoNCE at ``temperature``). With ``cache`` as in ``train_encoder``."""
    import torch
    import torch.nn.functional as F

    if _load_cached(model, cache):
        return model
    vocab = model.bert.config.vocab_size
    data = {
        k: torch.from_numpy(v)
        for k, v in made_up_sentences(steps * batch, seq, vocab, seed).items()
    }
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()  # dropout makes the two views
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        feeds = [data[n][rows] for n in ENCODER_INPUTS]
        a = F.normalize(model(*feeds), dim=1)
        b = F.normalize(model(*feeds), dim=1)
        loss = F.cross_entropy(a @ b.T / temperature, torch.arange(len(a)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step + 1, steps, float(loss.detach()))
    return _saved(model, cache)


def export_encoder(model: Any, path: Path, seq: int = 16) -> Path:
    """The encoder as ONNX (opset 17): three int64 inputs with free batch and sequence
    axes, one ``embedding`` output."""
    import warnings

    import torch

    example = made_up_sentences(2, seq, model.bert.config.vocab_size, seed=99)
    axes = {name: {0: "batch", 1: "sequence"} for name in ENCODER_INPUTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            tuple(torch.from_numpy(example[n]) for n in ENCODER_INPUTS),
            str(path),
            input_names=list(ENCODER_INPUTS),
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def write_encoder_eval_npz(path: Path, rows: int, seq: int, vocab: int, seed: int = 7) -> Path:
    """The operator's unlabeled ``eval.npz`` for the encoder: one array per input."""
    np.savez(path, **made_up_sentences(rows, seq, vocab, seed))  # type: ignore[arg-type]
    return path


def _load_cached(model: Any, cache: Path | None) -> bool:
    """Load ``model``'s weights from ``cache`` when it exists (and set it to eval)."""
    import torch

    if cache is None or not cache.is_file():
        return False
    model.load_state_dict(torch.load(str(cache), map_location="cpu", weights_only=True))
    model.eval()
    return True


def _saved(model: Any, cache: Path | None) -> Any:
    """``model`` set to eval, its weights written to ``cache`` when one is given."""
    import torch

    model.eval()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), str(cache))
    return model
