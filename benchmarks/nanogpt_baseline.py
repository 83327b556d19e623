"""A plain nanoGPT-style byte-level GPT trained with AdamW for a wall-clock budget on the prepared KJV splits, scored in bits per byte."""

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F

t_start = time.time()

# ---------------------------------------------------------------------------
# Settings. The shape follows the known-good CPU byte model; the step size matches train.py on CPU
# (16 rows x 256 = 4096 tokens per optimizer step), here a token is one byte.
# ---------------------------------------------------------------------------

DATASET = "kjv"
SEP = 256  # document separator, put before every document (like BOS); never scored
VOCAB_SIZE = 257  # 256 byte values + SEP
SEQ_LEN = 256
N_LAYER = 4
N_EMBD = 128
N_HEAD = 4
BATCH_SIZE = 16  # rows of SEQ_LEN bytes per optimizer step
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1  # on 2-D weights (matrices and embeddings), as in nanoGPT
GRAD_CLIP = 1.0
WARMUP_STEPS = 10  # linear warm-up, then cosine decay over the time budget
MIN_LR_FRAC = 0.1  # the cosine ends at this fraction of the peak learning rate
EVAL_BATCH_SIZE = 64
WARMUP_STEPS_EXCLUDED = 2  # first steps (allocator warm-up) not counted against the budget, as in train.py


# ---------------------------------------------------------------------------
# Model: GPT-2 style, pre-LayerNorm, learned absolute positions, GELU MLP, tied input/output embeddings
# ---------------------------------------------------------------------------

class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, n_layer, dim, n_head):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled down with depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x)).float()


# ---------------------------------------------------------------------------
# Data: the train/val documents prepare.py wrote, as UTF-8 bytes
# ---------------------------------------------------------------------------

def read_documents(cache: Path, split: str) -> list[bytes]:
    files = sorted((cache / DATASET / split).glob("*.parquet"))
    if not files:
        raise SystemExit(f"baseline: no {split} parquet files in {cache / DATASET / split}; run prepare.py first")
    return [text.encode("utf-8") for path in files for text in pq.read_table(path, columns=["text"]).column("text").to_pylist()]


def train_stream(docs: list[bytes]) -> torch.Tensor:
    """All training documents end to end, each preceded by SEP."""
    parts = []
    for doc in docs:
        parts.append(np.array([SEP], dtype=np.int64))
        parts.append(np.frombuffer(doc, dtype=np.uint8).astype(np.int64))
    return torch.from_numpy(np.concatenate(parts))


def random_batch(stream: torch.Tensor, generator: torch.Generator):
    """BATCH_SIZE windows of SEQ_LEN + 1 bytes at random offsets (nanoGPT's get_batch)."""
    starts = torch.randint(len(stream) - SEQ_LEN - 1, (BATCH_SIZE,), generator=generator)
    rows = torch.stack([stream[s:s + SEQ_LEN + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def eval_windows(docs: list[bytes]):
    """Every document as SEP + bytes, cut into contiguous non-overlapping windows of SEQ_LEN targets.

    Each byte of the split is a target exactly once; a window's context starts at its own first
    position. Short last windows are padded: inputs with 0, targets with -1 (ignored).
    """
    xs, ys = [], []
    for doc in docs:
        seq = torch.tensor([SEP] + list(doc), dtype=torch.long)
        for i in range(0, len(seq) - 1, SEQ_LEN):
            x, y = seq[i:i + SEQ_LEN], seq[i + 1:i + SEQ_LEN + 1]
            xs.append(F.pad(x, (0, SEQ_LEN - len(x)), value=0))
            ys.append(F.pad(y, (0, SEQ_LEN - len(y)), value=-1))
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def evaluate_bpb(model, x_val, y_val, autocast) -> tuple[float, int]:
    """Mean cross-entropy in nats per target byte, / ln 2, over all windows; also the number of bytes scored."""
    total_nats, total_bytes = 0.0, 0
    for i in range(0, len(x_val), EVAL_BATCH_SIZE):
        x, y = x_val[i:i + EVAL_BATCH_SIZE], y_val[i:i + EVAL_BATCH_SIZE]
        with autocast:
            logits = model(x)
        total_nats += F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), ignore_index=-1, reduction="sum").item()
        total_bytes += (y >= 0).sum().item()
    return total_nats / (math.log(2) * total_bytes), total_bytes


# ---------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------

def make_optimizer(model, lr):
    params = list(model.parameters())  # the tied embedding appears once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS)


def lr_at(step, progress, peak):
    """Linear warm-up over WARMUP_STEPS, times a cosine from 1 to MIN_LR_FRAC over the time budget."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return peak * warmup * (MIN_LR_FRAC + (1.0 - MIN_LR_FRAC) * cosine)


def cpu_has_bf16():
    """The same test train.py uses to turn on bf16 autocast on CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def main():
    default_cache = os.environ.get("AUTORESEARCH_CACHE") or str(Path.home() / ".cache" / "autoresearch")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of training (first steps excluded)")
    parser.add_argument("--cache", type=Path, default=Path(default_cache), help="the AUTORESEARCH_CACHE prepare.py wrote to")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    bf16 = cpu_has_bf16()
    autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16)

    stream = train_stream(read_documents(args.cache, "train"))
    x_val, y_val = eval_windows(read_documents(args.cache, "val"))
    model = GPT(VOCAB_SIZE, SEQ_LEN, N_LAYER, N_EMBD, N_HEAD)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, args.lr)
    tokens_per_step = BATCH_SIZE * SEQ_LEN
    print(f"device cpu | params {num_params / 1e6:.2f}M | vocab {VOCAB_SIZE} | seq {SEQ_LEN} | batch {tokens_per_step} bytes | "
          f"lr {args.lr:g} | bf16 autocast {int(bf16)} | train {len(stream):,} bytes | budget {args.budget:.0f}s | seed {args.seed}")

    step, training_time, smooth_loss = 0, 0.0, 0.0
    while True:
        t0 = time.time()
        x, y = random_batch(stream, generator)
        lr = lr_at(step, training_time / args.budget, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"step {step}: loss is {loss_value}; stopping (NaN or exploding loss)")
            raise SystemExit(1)
        dt = time.time() - t0
        if step >= WARMUP_STEPS_EXCLUDED:
            training_time += dt
        if step == 0:
            startup_seconds = time.time() - t_start
            print(f"first step after {startup_seconds:.1f}s from start")
        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
        step += 1
        if step % 50 == 0:
            debiased = smooth_loss / (1 - 0.9**step)
            print(f"step {step:5d} | loss {debiased:.4f} | lr {lr:.2e} | {tokens_per_step / dt:,.0f} tok/s | {training_time:.0f}/{args.budget:.0f}s")
        if training_time >= args.budget:
            break

    model.eval()
    val_bpb, val_bytes = evaluate_bpb(model, x_val, y_val, autocast)
    timed_tokens = (step - WARMUP_STEPS_EXCLUDED) * tokens_per_step
    tokens_per_second = timed_tokens / max(training_time, 1e-9)
    print(f"throughput {tokens_per_second:,.0f} tokens/s over {step - WARMUP_STEPS_EXCLUDED} timed steps")
    print("---")
    print(f"val_bpb:           {val_bpb:.6f}")
    print(f"tokens_per_second: {tokens_per_second:.0f}")
    print(f"startup_seconds:   {startup_seconds:.1f}")
    print(f"training_seconds:  {training_time:.1f}")
    print(f"total_seconds:     {time.time() - t_start:.1f}")
    print(f"num_steps:         {step}")
    print(f"num_params_M:      {num_params / 1e6:.2f}")
    print(f"val_bytes:         {val_bytes}")
    print(f"bf16_autocast:     {int(bf16)}")
    print(f"lr:                {args.lr:g}")


if __name__ == "__main__":
    main()
