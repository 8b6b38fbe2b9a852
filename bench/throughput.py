"""Training throughput (tokens/s) of reatt's GPT on CPU, side by side with a minimal reference.

    python bench/throughput.py                     # gpt-nano, gpt-micro, gpt-mini; block 256, batch 8
    python bench/throughput.py --models gpt-nano --rounds 3 --steps 2

For each model size, one process per allocator setting (glibc's default, and the tuned
GLIBC_TUNABLES that reatt's launchers set) runs three implementations in interleaved rounds,
so that the machine's drift hits them alike:

- ``reference``: a minimal minGPT-style GPT written below (explicit masked softmax attention,
  GELU MLP, LayerNorm, learned positions, untied lm_head) with AdamW and gradient clipping;
- ``baseline``: reatt's GPT with every toggle off (SDPA attention);
- ``all-on``: reatt's GPT with SwiGLU, RMSNorm and RoPE (warmup/cosine cost nothing per step).

Every step is a full training step on random tokens: forward, cross-entropy, backward, clip,
AdamW. Reported: the median tokens/s over rounds, and each implementation's ratio to the
reference measured in the same round. Then the token-cache build speed on the embedded corpus.
With dropout > 0 (``--dropout 0.1``, minGPT's default) PyTorch's SDPA takes its math path on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reatt.train import GLIBC_TUNABLES  # noqa: E402

VOCAB = 50257


def reference_gpt(n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float):  # noqa: ANN201
    """minGPT's model, minimally: attention as an explicit masked softmax."""
    import torch
    import torch.nn as nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)
            self.drop = nn.Dropout(dropout)
            mask = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
            self.register_buffer("mask", mask)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(C, dim=2)
            q = q.view(B, T, n_head, C // n_head).transpose(1, 2)
            k = k.view(B, T, n_head, C // n_head).transpose(1, 2)
            v = v.view(B, T, n_head, C // n_head).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
            att = self.drop(F.softmax(att, dim=-1))
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
            return self.drop(self.c_proj(y))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
            self.attn = Attention()
            self.fc, self.proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.drop(self.proj(F.gelu(self.fc(self.ln_2(x)))))

    class RefGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB, n_embd), nn.Embedding(block_size, n_embd)
            self.drop = nn.Dropout(dropout)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, VOCAB, bias=False)
            for p in self.parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor):  # noqa: ANN202
            pos = torch.arange(idx.size(1))
            x = self.drop(self.wte(idx) + self.wpe(pos))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return logits, F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))

        def configure_optimizer(self, tc):  # noqa: ANN001, ANN202
            return torch.optim.AdamW(self.parameters(), lr=tc.learning_rate, betas=tuple(tc.betas))

    return RefGPT()


def make_models(model_type: str, block: int, dropout: float) -> dict:
    from reatt.training.config import get_default_config
    from reatt.training.model import GPT
    from reatt.training.schema import MODEL_TYPES

    n_layer, n_head, n_embd = MODEL_TYPES[model_type]
    base = get_default_config().model
    base.model_type = model_type
    base.embd_pdrop = base.resid_pdrop = base.attn_pdrop = dropout
    allon = get_default_config().model
    allon.model_type = model_type
    allon.embd_pdrop = allon.resid_pdrop = allon.attn_pdrop = dropout
    allon.swiglu = allon.rmsnorm = allon.rope = True
    return {
        "reference": reference_gpt(n_layer, n_head, n_embd, block, dropout),
        "baseline": GPT(base, VOCAB, block),
        "all-on": GPT(allon, VOCAB, block),
    }


def worker(model_type: str, block: int, batch: int, rounds: int, steps: int, dropout: float) -> dict:
    """Interleaved rounds in this process: {impl: [tokens/s per round]}."""
    import torch

    from reatt.training.config import get_default_config

    torch.manual_seed(0)
    tc = get_default_config().trainer
    models = make_models(model_type, block, dropout)
    opts = {name: m.configure_optimizer(tc) for name, m in models.items()}
    x = torch.randint(0, VOCAB, (batch, block))
    y = torch.randint(0, VOCAB, (batch, block))

    def step(name: str) -> None:  # the same step as reatt.training.trainer.Trainer.run
        model, opt = models[name], opts[name]
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    for name in models:  # warm up: first steps allocate and fill the optimizer state
        models[name].train()
        step(name)
        step(name)
    result: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            result[name].append(steps * batch * block / (time.perf_counter() - t0))
    return result


def run_worker(model_type: str, args: argparse.Namespace, tuned: bool) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tuned:
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        model_type,
        f"--block={args.block}",
        f"--batch={args.batch}",
        f"--rounds={args.rounds}",
        f"--steps={args.steps}",
        f"--dropout={args.dropout}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cache_build_speed(repeats: int) -> list[tuple[float, float]]:
    """(tokens/s, MB/s) of building the token cache of the embedded corpus, fresh each time."""
    from reatt.training.cache import open_token_cache
    from reatt.training.corpus import embedded_corpus_path
    from reatt.training.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    out = []
    with tempfile.TemporaryDirectory() as corpus_dir:
        corpus = embedded_corpus_path(Path(corpus_dir))
        mb = corpus.stat().st_size / 1e6
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as cache_dir:
                t0 = time.perf_counter()
                cache = open_token_cache(corpus, tok, Path(cache_dir))
                dt = time.perf_counter() - t0
                out.append((cache.n_tokens / dt, mb / dt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt-nano,gpt-micro,gpt-mini")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout of every model (reatt's default: 0)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.block, args.batch, args.rounds, args.steps, args.dropout)))
        return

    import torch

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(
        f"# block {args.block}, batch {args.batch}, dropout {args.dropout}, "
        f"{args.rounds} rounds x {args.steps} steps, median tokens/s"
    )
    print()
    print(
        "| model | allocator | reference (manual attn) | reatt baseline | reatt all-on "
        "| baseline / ref | all-on / ref |"
    )
    print("|---|---|---|---|---|---|---|")
    for model_type in args.models.split(","):
        for tuned in (True, False):
            res = run_worker(model_type, args, tuned)
            med = {k: statistics.median(v) for k, v in res.items()}
            ratio = {
                k: statistics.median(a / b for a, b in zip(res[k], res["reference"], strict=True))
                for k in ("baseline", "all-on")
            }
            alloc = "tuned" if tuned else "glibc default"
            print(
                f"| {model_type} | {alloc} | {med['reference']:,.0f} | {med['baseline']:,.0f} | "
                f"{med['all-on']:,.0f} | {ratio['baseline']:.2f} | {ratio['all-on']:.2f} |",
                flush=True,
            )
    speeds = cache_build_speed(3)
    tok_s = statistics.median(s[0] for s in speeds)
    mb_s = statistics.median(s[1] for s in speeds)
    print()
    print(f"token cache build, embedded corpus, median of 3: {tok_s:,.0f} tokens/s, {mb_s:.2f} MB/s")


if __name__ == "__main__":
    main()
