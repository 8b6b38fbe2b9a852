"""Numerics of each architecture toggle against references written independently here."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from reatt.training.config import get_default_config
from reatt.training.model import GPT, MLP, RMSNorm, Rotary, SwiGLU, swiglu_hidden_size

VOCAB = 97


def model_cfg(**overrides):
    m = get_default_config().model
    m.model_type = ""
    m.n_layer, m.n_head, m.n_embd = 2, 2, 16
    m.embd_pdrop = m.resid_pdrop = m.attn_pdrop = 0.0
    for k, v in overrides.items():
        setattr(m, k, v)
    return m


def make_gpt(block_size=12, **overrides):
    torch.manual_seed(0)
    return GPT(model_cfg(**overrides), vocab_size=VOCAB, block_size=block_size).eval()


def test_rmsnorm_equals_torch_rmsnorm():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 32) * 3 + 1
    ours, ref = RMSNorm(32, eps=1e-5), torch.nn.RMSNorm(32, eps=1e-5)
    w = torch.randn(32)
    with torch.no_grad():
        ours.weight.copy_(w)
        ref.weight.copy_(w)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    # and against the formula, written out
    expect = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(ours(x), expect, rtol=1e-5, atol=1e-6)


def test_rmsnorm_replaces_every_layernorm():
    model = make_gpt(rmsnorm=True)
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.LayerNorm not in kinds
    assert isinstance(model.ln_f, RMSNorm)
    assert all(isinstance(b.ln_1, RMSNorm) and isinstance(b.ln_2, RMSNorm) for b in model.h)
    assert torch.nn.LayerNorm in {type(m) for m in make_gpt().modules()}


def rope_reference(x, base):
    """Half-split RoPE, element by element: pair i = (x[i], x[i + hs/2]) at position p
    rotates by p * base**(-2i/hs), as a complex multiplication."""
    B, H, T, hs = x.shape
    out = torch.empty_like(x)
    for p in range(T):
        for i in range(hs // 2):
            theta = p * base ** (-2 * i / hs)
            z = torch.complex(x[..., p, i].double(), x[..., p, i + hs // 2].double())
            z = z * complex(math.cos(theta), math.sin(theta))
            out[..., p, i] = z.real.float()
            out[..., p, i + hs // 2] = z.imag.float()
    return out


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rope_matches_independent_reference(base):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(Rotary(8, 16, base)(x), rope_reference(x, base), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(2)
    rot = Rotary(8, 32, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        seq_q = torch.zeros(1, 1, 32, 8)
        seq_k = torch.zeros(1, 1, 32, 8)
        seq_q[0, 0, m], seq_k[0, 0, n] = q, k
        return (rot(seq_q)[0, 0, m] * rot(seq_k)[0, 0, n]).sum()

    torch.testing.assert_close(score(5, 2), score(20, 17), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4))


def test_rope_drops_learned_positions_and_is_used():
    assert make_gpt(rope=True).wpe is None
    assert make_gpt().wpe is not None
    # with RoPE and no wpe, a permuted context still changes the last position's logits
    model = make_gpt(rope=True)
    idx = torch.randint(0, VOCAB, (1, 10))
    perm = torch.cat([idx[:, :9].flip(1), idx[:, 9:]], dim=1)
    assert not torch.allclose(model(idx)[0][0, -1], model(perm)[0][0, -1])


def test_swiglu_formula_and_parameter_match():
    torch.manual_seed(3)
    cfg = model_cfg(bias=False)
    mlp = SwiGLU(cfg, 48).eval()
    x = torch.randn(2, 5, 48)
    w1, w3, w2 = mlp.w1.weight, mlp.w3.weight, mlp.c_proj.weight
    expect = (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
    torch.testing.assert_close(mlp(x), expect, rtol=1e-5, atol=1e-6)
    for d in (48, 128, 192, 768):
        gelu = sum(p.numel() for p in MLP(model_cfg(bias=False), d).parameters())
        swi = sum(p.numel() for p in SwiGLU(model_cfg(bias=False), d).parameters())
        assert abs(swi - gelu) / gelu < 0.02, (d, swi, gelu)
    assert swiglu_hidden_size(48) == 128 and swiglu_hidden_size(768) == 2048
    assert swiglu_hidden_size(100) % 8 == 0 and swiglu_hidden_size(100) >= 800 / 3
    assert SwiGLU(model_cfg(swiglu_hidden=40), 16).w1.out_features == 40


def test_gelu_mlp_by_default_swiglu_when_on():
    assert all(isinstance(b.mlp, MLP) for b in make_gpt().h)
    assert all(isinstance(b.mlp, SwiGLU) for b in make_gpt(swiglu=True).h)


TOGGLES = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("swiglu,rmsnorm,rope", TOGGLES)
def test_causality(swiglu, rmsnorm, rope):
    """Changing token t never changes the logits at positions before t."""
    model = make_gpt(swiglu=swiglu, rmsnorm=rmsnorm, rope=rope)
    torch.manual_seed(4)
    idx = torch.randint(0, VOCAB, (2, 12))
    base = model(idx)[0]
    for t in (0, 5, 11):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        out = model(changed)[0]
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("fused", [False, True])
def test_loss_is_cross_entropy_and_starts_near_uniform(fused):
    model = make_gpt(fused_loss=fused)
    idx = torch.randint(0, VOCAB, (3, 12))
    logits, loss = model(idx, idx)
    assert (logits is None) == fused  # the fused loss never makes the logits
    logits, _ = model(idx)  # without targets: always the logits
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, VOCAB), idx.reshape(-1)))
    assert abs(loss.item() - math.log(VOCAB)) < 0.1  # small init: near-uniform predictions


def test_optimizer_split_is_minGPTs():
    model = make_gpt(swiglu=True, rmsnorm=True)
    opt = model.configure_optimizer(get_default_config().trainer)
    decay, no_decay = (set(map(id, g["params"])) for g in opt.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in decay} == {
        n
        for n, p in model.named_parameters()
        if n.endswith("weight") and p.dim() == 2 and not n.startswith(("wte", "wpe"))
    }
    assert {"wte.weight", "wpe.weight", "ln_f.weight"} <= {names[i] for i in no_decay}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0


def test_attention_under_cpu_bf16_autocast_runs_in_fp32(monkeypatch):
    """On a CPU under bf16 autocast the attention kernel gets fp32 q, k, v (faster there, and
    exacter); the rest of the forward stays in bf16."""
    from reatt.training import model as model_module

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):  # what the kernel computes in: autocast would cast fp32 q, k, v back to bf16
        y = real(q, k, v, **kw)
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu"), y.dtype))
        return y

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    model = make_gpt()
    x = torch.randint(0, VOCAB, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(x)
    fp32 = torch.float32
    assert logits.dtype == torch.bfloat16 and seen and set(seen) == {(fp32, fp32, fp32, False, fp32)}
    seen.clear()
    model(x)  # fp32: unchanged
    assert set(seen) == {(fp32, fp32, fp32, False, fp32)}


def test_param_counts_and_presets():
    cfg = get_default_config().model  # gpt-nano
    model = GPT(cfg, vocab_size=50257, block_size=64)
    assert (model.n_layer, model.n_head, model.n_embd) == (3, 3, 48)
    info = model.describe()
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert info["n_params_non_embedding"] == info["n_params"] - 50257 * 48 - 64 * 48
    # an explicit value overrides the preset
    cfg.n_layer = 1
    assert GPT(cfg, vocab_size=50257, block_size=64).n_layer == 1
    # SwiGLU keeps the parameter count (within biases) so the ablation compares architectures
    on = get_default_config().model
    on.swiglu = True
    n_on = GPT(on, vocab_size=50257, block_size=64).num_params()
    assert abs(n_on - info["n_params"]) / info["n_params"] < 0.001


def test_generate_uses_its_own_generator():
    model = make_gpt()
    idx = torch.zeros(1, 1, dtype=torch.long)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = model.generate(idx, 20, generator=torch.Generator().manual_seed(7))
    b = model.generate(idx, 20, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (1, 21)
    assert torch.equal(state, torch.get_rng_state())  # training RNG untouched
