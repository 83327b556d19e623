"""The agent's file: a small GPT trained for a fixed wall-clock budget, then scored in bits per byte.

Model in nanochat's spirit: rotary embeddings, QK-norm, RMSNorm without weights, ReLU² MLP, untied
embeddings, logit soft-capping. Muon for the 2-D matrices inside the blocks, AdamW for the rest.
Read top to bottom; everything here may be changed. The harness gives the budget and the seed through
AUTORESEARCH_TIME_BUDGET and AUTORESEARCH_SEED. Under the harness (AUTORESEARCH_ARTIFACTS set) it saves the
trained model as model.pt2 for the locked evaluate.py, which alone measures val_bpb; run by hand, it scores
itself. The last lines printed are the summary block.
"""

import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import DEFAULT_TIME_BUDGET, MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader

t_start = time.time()
CUDA = torch.cuda.is_available()
MPS = not CUDA and torch.backends.mps.is_available()
DEVICE = "cuda" if CUDA else "mps" if MPS else "cpu"

# ---------------------------------------------------------------------------
# Hyperparameters (first value: CUDA; second: CPU and Apple GPUs)
# ---------------------------------------------------------------------------

DEPTH = 8 if CUDA else 4  # transformer blocks
MODEL_DIM = 512 if CUDA else 128  # residual stream width
HEAD_DIM = 128 if CUDA else 32  # attention head width (MODEL_DIM // HEAD_DIM heads)
MLP_RATIO = 4  # hidden width of the MLP over MODEL_DIM
DEVICE_BATCH_SIZE = 64 if CUDA else 16  # rows of MAX_SEQ_LEN tokens per forward/backward
TOTAL_BATCH_SIZE = 524288 if CUDA else 4096  # tokens per optimizer step (gradient accumulation fills it)
MATRIX_LR = 0.04  # Muon, block matrices
EMBEDDING_LR = 0.6  # AdamW, token embedding (scaled by (MODEL_DIM/768)^-0.5)
UNEMBEDDING_LR = 0.004  # AdamW, lm_head (scaled likewise)
WEIGHT_DECAY = 0.0  # Muon weight decay
ADAM_BETA1 = 0.8
ADAM_BETA2 = 0.95
WARMUP_RATIO = 0.0  # share of the budget spent warming the learning rate up
WARMDOWN_RATIO = 0.5  # share of the budget spent decaying it to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0
LOGIT_SOFTCAP = 15.0
COMPILE = 1 if CUDA else 0  # torch.compile (costs 20-35 s cold on CPU, so off there)
CPU_BF16 = 1  # bf16 autocast on CPUs with native bf16 (avx512_bf16 or AMX): about 1.35x faster
EVAL_BATCH_SIZE = 32 if CUDA else 16
WARMUP_STEPS_EXCLUDED = 2  # first steps (compile, allocator warm-up) not counted against the budget
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", DEFAULT_TIME_BUDGET))
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))
ARTIFACTS = os.environ.get("AUTORESEARCH_ARTIFACTS")  # where the harness's evaluator looks for model.pt2


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base=10000.0, device=None):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, head_dim/2)


def apply_rotary(x, cos, sin):  # x: (B, T, H, D)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # QK-norm
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim, ratio):
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim, bias=False)
        self.proj = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, head_dim, mlp_ratio):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, cos, sin):
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, depth, dim, head_dim, mlp_ratio, softcap):
        super().__init__()
        self.softcap = softcap
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, head_dim, mlp_ratio) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        cos, sin = rotary_tables(seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights(dim)

    @torch.no_grad()
    def init_weights(self, dim):
        bound = (3 / dim) ** 0.5
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.mlp.fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            for linear in (block.attn.proj, block.mlp.proj):  # residual branches start as identity
                nn.init.zeros_(linear.weight)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(rms_norm(x)).float()
        logits = self.softcap * torch.tanh(logits / self.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------
# Optimizers and schedule
# ---------------------------------------------------------------------------

def make_optimizers(model, dim):
    scale = (dim / 768) ** -0.5
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    adam_groups = [
        {"params": [model.wte.weight], "lr": EMBEDDING_LR * scale},
        {"params": [model.lm_head.weight], "lr": UNEMBEDDING_LR * scale},
    ]
    adam = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=CUDA)
    muon = torch.optim.Muon(matrices, lr=MATRIX_LR, momentum=0.95, nesterov=True, weight_decay=WEIGHT_DECAY, adjust_lr_fn="original")
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = max(0.0, 1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def peak_memory_mb():
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_flops():
    """Dense bf16 peak of the GPU for MFU, or 0 where it is not known."""
    if not CUDA:
        return 0.0
    name = torch.cuda.get_device_name()
    for key, flops in (("H200", 989.5e12), ("H100", 989.5e12), ("A100", 312e12), ("L40S", 362e12), ("4090", 165.2e12), ("3090", 71e12)):
        if key in name:
            return flops
    return 0.0


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

torch.manual_seed(SEED)
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
if CUDA:
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)
else:
    autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bool(CPU_BF16) and DEVICE == "cpu" and cpu_has_bf16())

tokenizer = Tokenizer.from_directory()
vocab_size = tokenizer.get_vocab_size()
model = GPT(vocab_size, MAX_SEQ_LEN, DEPTH, MODEL_DIM, HEAD_DIM, MLP_RATIO, LOGIT_SOFTCAP).to(DEVICE)
num_params = sum(p.numel() for p in model.parameters())
# Matmul FLOPs per token (6N) plus attention (12·L·D·T / 2 for causal), for MFU.
flops_per_token = 6 * (num_params - model.wte.weight.numel()) + 6 * DEPTH * MODEL_DIM * MAX_SEQ_LEN
step_model = torch.compile(model) if COMPILE else model
optimizers = make_optimizers(model, MODEL_DIM)

tokens_per_pass = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_pass == 0, "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * MAX_SEQ_LEN"
grad_accum = TOTAL_BATCH_SIZE // tokens_per_pass
train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=DEVICE)
print(f"device {DEVICE} | params {num_params / 1e6:.2f}M | vocab {vocab_size} | seq {MAX_SEQ_LEN} | "
      f"batch {TOTAL_BATCH_SIZE} tokens ({grad_accum} x {DEVICE_BATCH_SIZE} rows) | budget {TIME_BUDGET:.0f}s | seed {SEED}")

step, training_time, smooth_loss = 0, 0.0, 0.0
last_print = time.time()
x, y, epoch = next(train_loader)
while True:
    if CUDA:
        torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(grad_accum):
        with autocast:
            loss = step_model(x, y)
        (loss / grad_accum).backward()
        x, y, epoch = next(train_loader)
    loss_value = loss.item()
    if not math.isfinite(loss_value) or loss_value > 100:
        print(f"step {step}: loss is {loss_value}; stopping (NaN or exploding loss)")
        raise SystemExit(1)
    multiplier = lr_multiplier(training_time / TIME_BUDGET)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        opt.step()
    model.zero_grad(set_to_none=True)
    if CUDA:
        torch.cuda.synchronize()
    dt = time.time() - t0
    if step >= WARMUP_STEPS_EXCLUDED:
        training_time += dt
    if step == 0:
        print(f"first step after {time.time() - t_start:.1f}s from start")
    smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
    step += 1
    if step % 25 == 0 or time.time() - last_print >= 2.0:  # also every 2 s: the harness's early stopping reads these
        last_print = time.time()
        debiased = smooth_loss / (1 - 0.9**step)
        print(f"step {step:5d} | loss {debiased:.4f} | lr x{multiplier:.2f} | {TOTAL_BATCH_SIZE / dt:,.0f} tok/s | "
              f"epoch {epoch} | {training_time:.0f}/{TIME_BUDGET:.0f}s")
    if training_time >= TIME_BUDGET:
        break

total_tokens = step * TOTAL_BATCH_SIZE
model.eval()
val_bpb = None
if ARTIFACTS:  # under the harness: the locked evaluator scores this graph (no Python of this file in it) in its own process
    t_export = time.time()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.zeros((2, MAX_SEQ_LEN), dtype=torch.long, device=DEVICE)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # the harness's evaluator can score only an exported graph
        print(f"export failed: {type(exc).__name__}: {exc}\nThe model must trace with torch.export: forward(tokens) -> logits "
              "(batch, seq, vocab), no Python branching on tensor values, any batch size (see torch.export's docs).")
        raise SystemExit(1)
    torch.export.save(program, os.path.join(ARTIFACTS, "model.pt2"))
    print(f"exported model.pt2 in {time.time() - t_export:.1f}s")
else:  # a manual run: score it here (the harness hides the validation split from this process)
    with autocast:
        val_bpb = evaluate_bpb(model, tokenizer, EVAL_BATCH_SIZE, device=DEVICE)
timed_tokens = (step - WARMUP_STEPS_EXCLUDED) * TOTAL_BATCH_SIZE
mfu = 100 * flops_per_token * timed_tokens / training_time / peak_flops() if peak_flops() and training_time else 0.0

print(f"throughput {timed_tokens / max(training_time, 1e-9):,.0f} tokens/s over {step - WARMUP_STEPS_EXCLUDED} timed steps")
print("---")
if val_bpb is not None:
    print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {training_time:.1f}")
print(f"total_seconds:    {time.time() - t_start:.1f}")
print(f"peak_vram_mb:     {peak_memory_mb():.1f}")
print(f"mfu_percent:      {mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
