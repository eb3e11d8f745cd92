"""A tiny randomly initialised CLIP with a tokenizer trained on the spot: no download, seconds to build.

Used by the tests and by `python -m mimic bench-link --backbone tiny-clip`. It exercises exactly the
code path of the real CLIP backbone (transformers `CLIPModel` + a fast tokenizer saved in a folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from mimic.testing.synthetic import vocabulary


def build_tiny_clip(
    path: Path, image_size: int = 64, patch_size: int = 16, hidden: int = 64, projection_dim: int = 48, seed: int = 0
) -> Path:
    """Save a random CLIPModel + a locally trained BPE tokenizer to `path` and return it."""
    specials = ["<|startoftext|>", "<|endoftext|>", "<|unk|>"]
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = vocabulary() * 3 + [
        "[SEP]",
        "the quick brown fox jumps over the lazy dog",
        "a photo of",
        " ".join("0123456789"),
    ]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
        pad_token="<|endoftext|>",
    )
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    model = CLIPModel(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
