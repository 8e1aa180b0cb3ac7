"""transformers reference for `saerl bench ingest --device cuda`: activation collection at
Qwen2.5-0.5B's shape (random weights, float32) on the GPU, as saerl ingests: raw questions, right
padding, batch 16, max 512 tokens, the outputs of blocks 6/12/18/23 gathered at real tokens and
copied to the host. Prints `tokens/s` of real tokens.

usage: python3 bench/transformers_ingest.py QUESTIONS.jsonl TOKENIZER_DIR [--n 256]
"""
import argparse
import json
import time

import torch
from tokenizers import Tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("questions")
ap.add_argument("tokenizer")
ap.add_argument("--n", type=int, default=256)
a = ap.parse_args()
torch.manual_seed(0)
cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
model = Qwen2ForCausalLM(cfg).to("cuda").eval()
tok = Tokenizer.from_file(f"{a.tokenizer}/tokenizer.json")
questions = [json.loads(line)["question"] for line in open(a.questions)][: a.n]
blocks = (6, 12, 18, 23)
captured = {}
for b in blocks:
    model.model.layers[b].register_forward_hook(
        lambda m, i, o, b=b: captured.__setitem__(b, o[0] if isinstance(o, tuple) else o))


def collect(qs):
    tokens = 0
    with torch.no_grad():
        for s in range(0, len(qs), 16):
            rows = [tok.encode(q, add_special_tokens=False).ids[:512] for q in qs[s:s + 16]]
            t = max(map(len, rows))
            ids = torch.full((len(rows), t), 151643)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            ids, mask = ids.cuda(), mask.cuda()
            model.model(input_ids=ids, attention_mask=mask)
            real = mask.bool()
            for b in blocks:
                captured[b][real].cpu()
            tokens += int(mask.sum())
    return tokens


collect(questions[:16])  # warm-up: kernels, allocator
torch.cuda.synchronize()
t0 = time.perf_counter()
n = collect(questions)
torch.cuda.synchronize()
dt = time.perf_counter() - t0
print(f"transformers {torch.__version__} cuda f32: {n} tokens in {dt:.2f}s = {n / dt:.0f} tokens/s")
