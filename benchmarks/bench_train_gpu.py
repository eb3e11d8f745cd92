"""Fine-tuning throughput of MIMIC with a CLIP ViT-B/32-sized backbone: samples/s and peak GPU memory,
fp32 vs bf16 autocast, the backbone trained (what `python -m mimic retrain` does on CUDA).

    python benchmarks/bench_train_gpu.py                       # CUDA, ViT-B/32 sizes, batch 128
    python benchmarks/bench_train_gpu.py --size tiny --device cpu --steps 3 --batch-size 8   # smoke test

The CLIP is randomly initialised (no weights exist offline) with the sizes of openai/clip-vit-base-patch32
(text 512-d × 12 layers, vision 768-d × 12 layers, patch 32 at 224 px, projection 512); the tokenizer is
trained on the spot. Data loading is kept out of the way on purpose: images are decoded and resized once
into a uint8 cache [N, 3, 224, 224] kept on the device (as `mimic.training.input_cache` does when it fits), texts
are tokenized once; each step gathers a batch there, normalises it and runs backbone + MIMIC heads +
the in-batch loss + AdamW.
A step is: B mentions (text + image) and their B gold entities (text + image), as in training.
Prints one JSON object: per precision samples/s (mentions per second), ms per step, peak memory,
and the bf16/fp32 speed ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_common import random_square_crop, sample_photos, write_json


def build_clip(path: Path, size: str) -> Path:
    """A random CLIP of the given size with a locally trained tokenizer, saved to `path`."""
    from transformers import CLIPConfig, CLIPModel

    from mimic.testing.tiny_clip import build_tiny_clip

    build_tiny_clip(path, image_size=224, patch_size=32)  # tokenizer (and a tiny model, replaced below)
    if size == "vit-b-32":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        eos = tok.eos_token_id
        cfg = CLIPConfig(
            text_config=dict(
                vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=eos
            ),  # hidden 512, 12 layers, 8 heads (defaults)
            vision_config=dict(image_size=224, patch_size=32),  # hidden 768, 12 layers, 12 heads
            projection_dim=512,
        )
        torch.manual_seed(0)
        CLIPModel(cfg).save_pretrained(path)
    return path


def image_cache(n: int, seed: int = 0) -> torch.Tensor:
    """n pre-decoded, pre-resized RGB images as uint8 [n, 3, 224, 224] (moved to the device by the caller).
    Real sample photos (scikit-image) cut into varied crops, so the data is not constant."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    out = torch.empty((n, 3, 224, 224), dtype=torch.uint8)
    for i in range(n):
        crop = random_square_crop(photos[i % len(photos)], rng, 224)
        out[i] = torch.from_numpy(np.array(crop)).permute(2, 0, 1)
    return out


def run(precision: str, model, cache, m_tok, e_tok, batch: int, steps: int, warmup: int, device) -> dict:
    bf16 = precision == "bf16"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")  # as mimic.training.trainer
    n = cache.shape[0]
    has = torch.ones(batch, dtype=torch.bool, device=device)
    gold = torch.arange(batch, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    times = []
    for step in range(warmup + steps):
        idx = torch.randint(0, n, (batch,), device=device)
        t0 = time.perf_counter()

        def pixels(rows):
            # What mimic.training.input_cache does in training: gather uint8 rows, normalise on the device.
            return model.backbone.normalize_pixels(cache[rows], has)

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            m_text = model.backbone.encode_text(m_tok["input_ids"][idx], m_tok["attention_mask"][idx])
            e_text = model.backbone.encode_text(e_tok["input_ids"][idx], e_tok["attention_mask"][idx])
            m_img = model.backbone.encode_images(pixels(idx), has, all_present=True)
            e_img = model.backbone.encode_images(pixels((idx + 1) % n), has, all_present=True)
            loss, _ = model.heads.training_loss(m_text, m_img, e_text, e_img, gold)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{precision}: non-finite loss at step {step}")
    ms = 1000 * float(np.median(times))
    out = {
        "samples_per_s": round(batch / (ms / 1000), 1),
        "ms_per_step_median": round(ms, 1),
        "ms_per_step_min": round(1000 * min(times), 1),
        "steps": steps,
        "final_loss": round(float(loss.detach()), 4),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["vit-b-32", "tiny"], default="vit-b-32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--json")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (TF32 would blur the comparison)
    torch.backends.cudnn.allow_tf32 = False
    from mimic.backbones.clip import ClipBackbone
    from mimic.models.linking_model import LinkingModel

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = image_cache(a.images)
        prep_s = time.perf_counter() - t0
        clip_dir = build_clip(Path(tmp) / "clip", a.size)
        results = {
            "size": a.size,
            "device": str(device),
            "batch_size": a.batch_size,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "image_cache": {"images": a.images, "bytes": int(cache.numel()), "build_s": round(prep_s, 1)},
        }
        words = ["chelsea", "football", "club", "cat", "district", "river", "coffee", "cafe", "planet", "god"]
        rng = np.random.default_rng(0)
        m_texts = [" ".join(rng.choice(words, 12)) for _ in range(a.images)]
        e_texts = [" ".join(rng.choice(words, 30)) for _ in range(a.images)]
        for prec in [p.strip() for p in a.precisions.split(",") if p.strip()]:
            torch.manual_seed(0)
            model = LinkingModel.build(ClipBackbone(str(clip_dir)), mode="fixed").to(device)
            for p in model.parameters():
                p.requires_grad_(True)  # the backbone is fine-tuned too
            m_tok = {k: v.to(device) for k, v in model.backbone.tokenize(m_texts, model.config.text_max_length).items()}
            e_tok = {k: v.to(device) for k, v in model.backbone.tokenize(e_texts, model.config.text_max_length).items()}
            results["params_millions"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
            results[prec] = run(prec, model, cache.to(device), m_tok, e_tok, a.batch_size, a.steps, a.warmup, device)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "fp32" in results and "bf16" in results:
            results["bf16_speedup"] = round(results["bf16"]["samples_per_s"] / results["fp32"]["samples_per_s"], 2)
    print(write_json(results, a.json))


if __name__ == "__main__":
    main()
