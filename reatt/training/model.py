"""A minGPT-style GPT with the three architecture toggles of the ablation.

- ``model.swiglu``: the MLP becomes ``W2(SiLU(W1 x) * W3 x)``.
- ``model.rmsnorm``: every LayerNorm (``ln_f`` included) becomes ``RMSNorm``.
- ``model.rope``: rotary position embeddings on q and k, and no learned position table.

Rotation convention (RoPE): **half-split**, as in GPT-NeoX and Llama. A head vector of size
``hs`` is split into halves ``x1 = x[..., :hs/2]`` and ``x2 = x[..., hs/2:]``; pair ``i`` is
``(x1[i], x2[i])`` and rotates by angle ``pos * base ** (-2i / hs)``:
``out = cat(x1 cos - x2 sin, x2 cos + x1 sin)``. (The interleaved convention of the original
paper pairs ``x[2i], x[2i+1]`` instead; the two differ by a fixed permutation of q and k.)

Attention is causal through ``torch.nn.functional.scaled_dot_product_attention`` (in fp32
under bf16 autocast on a CPU, where that kernel is faster in fp32).
The lm_head is a separate Linear (as in minGPT), or with ``model.tie_weights`` the token
embedding's matrix (as in GPT-2 and nanoGPT). With ``model.fused_loss`` (the default) a forward
with targets computes the lm_head and the loss in chunks of rows (``reatt.training.loss``) and
returns no logits.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from reatt.training.config import CfgNode, model_dims
from reatt.training.loss import IGNORE_INDEX, linear_cross_entropy


def swiglu_hidden_size(n_embd: int) -> int:
    """Hidden width that gives SwiGLU (3 matrices) the parameters of the 4x GELU MLP (2 matrices).

    3 * h * d == 2 * 4d * d  =>  h = 8d/3, rounded up to a multiple of 8.
    """
    return 8 * math.ceil(8 * n_embd / 3 / 8)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight; equal to torch.nn.RMSNorm(dim, eps)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # the mean of squares in fp32, also under bf16 autocast
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def make_norm(config: CfgNode, dim: int) -> nn.Module:
    if config.rmsnorm:
        return RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


class Rotary(nn.Module):
    """cos/sin tables for half-split rotary embeddings, up to ``block_size`` positions."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, head_size: int, block_size: int, base: float) -> None:
        super().__init__()
        assert head_size % 2 == 0, "RoPE needs an even head size"
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float64), inv_freq)  # (T, hs/2)
        # not persistent: derived from the config, so checkpoints stay free of them
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape (B, nh, T, hs) by its positions 0..T-1."""
        T = x.size(-2)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)  # (T, hs/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: CfgNode, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.attn_pdrop = config.attn_pdrop
        self.rotary = Rotary(n_embd // n_head, block_size, config.rope_base) if config.rope else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        dropout = self.attn_pdrop if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # bf16 autocast on a CPU: attention in fp32, which torch's CPU flash kernel runs
            # faster than bf16 (fwd + bwd at B 8, T 256, 6 heads of 32: 9.6 vs 12.9 ms, measured on
            # an AMX CPU; docs/benchmarks.md), and more exactly; y goes on in bf16
            with torch.autocast("cpu", enabled=False):
                q, k, v = q.float(), k.float(), v.float()
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            y = y.to(torch.bfloat16)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2's MLP: c_proj(GELU(c_fc x)), hidden width 4 * n_embd."""

    def __init__(self, config: CfgNode, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class SwiGLU(nn.Module):
    """W2(SiLU(W1 x) * W3 x); ``w2`` plays the role of GPT-2's c_proj."""

    def __init__(self, config: CfgNode, n_embd: int) -> None:
        super().__init__()
        hidden = config.swiglu_hidden or swiglu_hidden_size(n_embd)
        self.w1 = nn.Linear(n_embd, hidden, bias=config.bias)  # gate
        self.w3 = nn.Linear(n_embd, hidden, bias=config.bias)  # value
        self.c_proj = nn.Linear(hidden, n_embd, bias=config.bias)  # W2
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: CfgNode, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(config, n_embd)
        self.attn = CausalSelfAttention(config, n_embd, n_head, block_size)
        self.ln_2 = make_norm(config, n_embd)
        self.mlp: nn.Module = SwiGLU(config, n_embd) if config.swiglu else MLP(config, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def param_generator(seed: int, name: str) -> torch.Generator:
    """The CPU generator a parameter is drawn from: seeded by the first 8 bytes of
    sha256("<seed>:<name>") (63 bits), so its values depend on the run's seed and its own name
    only, never on which other parameters a variant has or in what order they are made."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))


def tensor_fingerprint(t: torch.Tensor) -> str:
    """ "<shape like 48x64>:<first 16 hex of sha256 of its bytes>": recorded at init, so that two
    runs can be checked to have started from the same values where their shapes agree."""
    data = t.detach().cpu().contiguous().numpy().tobytes()
    return "x".join(map(str, t.shape)) + ":" + hashlib.sha256(data).hexdigest()[:16]


class GPT(nn.Module):
    """GPT language model. ``config`` is the ``model`` node of the config tree."""

    def __init__(self, config: CfgNode, vocab_size: int, block_size: int, seed: int = 0) -> None:
        """``seed`` (the run's system.seed) seeds each parameter's init on its own."""
        super().__init__()
        # the layers' own default init draws from the global RNG (dropout's stream): building
        # the model gives those draws back, so every variant of a seed trains with the same masks
        rng_before = torch.get_rng_state()
        try:
            self._build(config, vocab_size, block_size)
        finally:
            torch.set_rng_state(rng_before)
        self._init_parameters(seed)
        self.init_fingerprint = {name: tensor_fingerprint(p) for name, p in self.named_parameters()}

    def _build(self, config: CfgNode, vocab_size: int, block_size: int) -> None:
        self.config = config
        self.n_layer, self.n_head, self.n_embd = model_dims(config)
        self.vocab_size, self.block_size = vocab_size, block_size
        d = self.n_embd
        self.wte = nn.Embedding(vocab_size, d)
        # RoPE carries position inside attention: no learned position table is created
        self.wpe = None if config.rope else nn.Embedding(block_size, d)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, d, self.n_head, block_size) for _ in range(self.n_layer))
        self.ln_f = make_norm(config, d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        if config.tie_weights:  # one parameter, wte's (named so in named_parameters, init once)
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def _init_parameters(self, seed: int) -> None:
        """GPT-2's init (normal 0.02, the residual projections scaled by 1/sqrt(2 n_layer), norms
        at one, biases at zero), each parameter drawn from a generator of its own
        (``param_generator``): variants of one seed start from the same values wherever their
        architectures agree (RoPE drops the position table, SwiGLU changes the MLP: nothing
        else moves), which is what makes a comparison paired by seed tight. Draws nothing from
        the global RNG. A tied lm_head is wte's matrix, drawn once as ``wte.weight``."""
        done: set[int] = set()
        for module_name, module in self.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in done:  # the tied lm_head.weight: wte.weight, already drawn
                    continue
                done.add(id(p))
                name = f"{module_name}.{pname}" if module_name else pname
                if isinstance(module, nn.LayerNorm | RMSNorm) and pname == "weight":
                    nn.init.ones_(p)
                elif pname == "bias":
                    nn.init.zeros_(p)
                elif isinstance(module, nn.Linear | nn.Embedding):
                    std = 0.02 / math.sqrt(2 * self.n_layer) if name.endswith("c_proj.weight") else 0.02
                    p.copy_(torch.randn(p.shape, generator=param_generator(seed, name)) * std)
                else:
                    raise TypeError(f"GPT init: no rule for parameter {name} of {type(module).__name__}")

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.wte.weight

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, a tied matrix once; ``non_embedding`` leaves out the token and
        position tables (the lm_head, a matmul, is counted: when tied, the shared matrix is
        counted as the lm_head, so the count equals the untied model's)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if not self.tied:
                n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per matmul parameter plus attention (PaLM appendix B).
        A tied lm_head's matmul costs its 6 V d all the same: ``num_params(non_embedding=True)``
        counts it."""
        attn = 12 * self.n_layer * self.n_embd * self.block_size
        return 6.0 * self.num_params(non_embedding=True) + attn

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits, loss). With targets (-1: ignored) and ``model.fused_loss``: (None, loss),
        the logits never made whole; else the logits (B, T, vocab) and the loss (None without
        targets). The loss is the mean cross-entropy in fp32, also under bf16 autocast."""
        B, T = idx.size()
        assert T <= self.block_size, f"sequence of {T} tokens exceeds block_size {self.block_size}"
        x = self.wte(idx)  # (B, T, d)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is not None and self.config.fused_loss:
            hidden = x.view(B * T, self.n_embd)
            loss = linear_cross_entropy(
                hidden, self.lm_head.weight, targets.view(-1), chunk=self.config.loss_chunk
            )
            return None, loss
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        flat = logits.view(-1, logits.size(-1)).float()
        return logits, F.cross_entropy(flat, targets.view(-1), ignore_index=IGNORE_INDEX)

    def configure_optimizer(self, train_config: CfgNode) -> torch.optim.AdamW:
        """AdamW with minGPT's split: Linear weights decay; biases, norms and embeddings do not.

        A tied wte/lm_head matrix is one parameter (``wte.weight``) and decays: it is the
        lm_head's Linear weight, whose rows all get a gradient at every step through the softmax
        (minGPT leaves embeddings undecayed because a row of a rare token gets none, and decay
        alone would shrink it); GPT-2 and nanoGPT decay it too.

        torch's default AdamW, not its fused one (``fused=True``, 3.5x faster on CPU at
        gpt-mini: docs/benchmarks.md). The fused one was tried and taken out when a resume came
        out inexact with it; the cause lay elsewhere (docs/guarantees.md: one process in about
        ten computes differently from step 0 on), but it has not been validated again since."""
        params = dict(self.named_parameters())  # a tied matrix once, by its first name
        name_of = {id(p): n for n, p in params.items()}
        decay, no_decay = set(), set()
        for m in self.modules():
            for pn, p in m.named_parameters(recurse=False):
                if pn == "weight" and isinstance(m, nn.Linear):
                    decay.add(name_of[id(p)])
                else:  # biases, LayerNorm/RMSNorm weights, Embedding tables
                    no_decay.add(name_of[id(p)])
        no_decay -= decay  # the tied matrix is also the Embedding's: it decays
        assert decay.isdisjoint(no_decay) and decay | no_decay == set(params)
        groups = [
            {"params": [params[n] for n in sorted(decay)], "weight_decay": train_config.weight_decay},
            {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=train_config.learning_rate, betas=tuple(train_config.betas))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations of ``idx`` (B, T), cropping to block_size.

        A separate ``generator`` keeps sampling from disturbing the training RNG stream.
        """
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.block_size :]
            logits, _ = self(ctx)
            assert logits is not None  # without targets, always
            logits = logits[:, -1, :].float() / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx

    def describe(self) -> dict[str, Any]:
        """Resolved dimensions and parameter counts, for config.json and final.json."""
        mlp_hidden = (
            (self.config.swiglu_hidden or swiglu_hidden_size(self.n_embd))
            if self.config.swiglu
            else 4 * self.n_embd
        )
        return {
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "vocab_size": self.vocab_size,
            "block_size": self.block_size,
            "mlp_hidden": mlp_hidden,
            "tie_weights": self.tied,  # lm_head.weight is wte.weight: one parameter
            "n_params": self.num_params(),
            "n_params_non_embedding": self.num_params(non_embedding=True),
            "flops_per_token": self.flops_per_token(),
            "init": dict(self.init_fingerprint),  # parameter -> "shape:sha256[:16]" at init
        }
