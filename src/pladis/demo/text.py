"""Word-level tokenizer (built in memory, no files) and the CLIP text-encoder config of the demo model.

Like Stable Diffusion 1.x's CLIP tokenizer, every prompt becomes exactly 77 ids:
``<|startoftext|> words... <|endoftext|> <|endoftext|> ...`` (padding *is* the end token), and the text
encoder is a causal :class:`transformers.CLIPTextModel` whose 77 hidden states are all attended by the
UNet's cross-attention (no attention mask), as in SD.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, PreTrainedTokenizerFast

from .scenes import WORDS

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LEN = 77
VOCAB = [BOS, EOS, UNK, *WORDS]


def build_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer; ``vocab_size`` keeps only the first words (an older model's vocabulary: newer words -> UNK)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(VOCAB[:vocab_size])}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        model_max_length=MAX_LEN,
        padding_side="right",
    )


def fast_ids(captions: list[str], device="cpu", vocab_size: int | None = None) -> torch.Tensor:
    """The tokenizer's ``padding="max_length"`` ids, computed without it (for the training loop)."""
    vocab = {w: i for i, w in enumerate(VOCAB[:vocab_size])}
    out = torch.full((len(captions), MAX_LEN), vocab[EOS], dtype=torch.long)
    for i, c in enumerate(captions):
        ids = [vocab[BOS], *[vocab.get(w, vocab[UNK]) for w in c.lower().split()][: MAX_LEN - 2], vocab[EOS]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out.to(device)


def text_config(hidden: int = 256, layers: int = 3, heads: int = 4) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        projection_dim=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LEN,
        hidden_act="quick_gelu",
        bos_token_id=VOCAB.index(BOS),
        eos_token_id=VOCAB.index(EOS),
        pad_token_id=VOCAB.index(EOS),
    )
