"""Shared fixtures: a tiny randomly initialised CLIP (no download) and synthetic data.

The tiny CLIP uses a BPE tokenizer trained here on the synthetic vocabulary, so nothing is fetched.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MELBENCH = REPO.parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"

torch.set_num_threads(min(2, torch.get_num_threads()))


def build_tiny_clip(path: Path, image_size: int = 64, patch_size: int = 16, hidden: int = 64,
                    projection_dim: int = 48, seed: int = 0) -> Path:
    """Save a random CLIPModel + a locally trained BPE tokenizer to `path` and return it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    from mimic.data.synthetic import vocabulary

    specials = ["<|startoftext|>", "<|endoftext|>", "<|unk|>"]
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = vocabulary() * 3 + ["[SEP]", "the quick brown fox jumps over the lazy dog", "a photo of"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|unk|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim)
    model = CLIPModel(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from mimic.backbones.clip import ClipBackbone
    return ClipBackbone(str(tiny_clip_dir)).eval()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    from mimic.data.synthetic import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), n_names=6, per_name=3, mentions_per_entity=8)


@pytest.fixture(scope="session")
def synthetic_official(tmp_path_factory, synthetic_dataset) -> Path:
    """The synthetic dataset written in the official MIMIC layout."""
    from mimic.data.formats import write_official
    root = tmp_path_factory.mktemp("official") / "WikiMEL"
    write_official(synthetic_dataset, root, prefix="WIKIMEL")
    return root
