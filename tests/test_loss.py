"""The chunked linear + cross-entropy against the plain loss, weight tying, and the precision a
run trains in (resolution, autocast, what config.json and final.json record, plan and report).

Tolerances: in fp64 the chunked loss and its gradients equal the plain ones to 1e-12 (the
algorithm is exact; only the order of the sums differs); in fp32 to rtol 1e-5 / atol 1e-6 on the
loss and atol 1e-6 on gradients of size ~1e-3 (fp32 rounding of sums over 50k logits); in bf16
autocast the fused loss is within 2e-2 relative of the plain bf16 loss's gradients (bf16 keeps 8
bits of mantissa: both round the logits and the matmuls' inputs alike, but at other places).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from reatt.errors import ConfigError, SpecError
from reatt.report.comparable import incomparable, incomparable_note
from reatt.rundir import FinalRecord
from reatt.study.spec import load_spec
from reatt.train import main
from reatt.training.config import get_default_config, parse_value
from reatt.training.loss import linear_cross_entropy
from reatt.training.model import GPT
from reatt.training.precision import cpu_flags, legacy_precision, recorded_precision, resolve_precision
from reatt.training.workdir import config_differences


def plain(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """GPT.forward's plain loss (logits to fp32; kept in fp64 for fp64 inputs)."""
    logits = F.linear(h, w)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), t, ignore_index=-1)


def loss_and_grads(fn, h, w, t, **kw):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = fn(h, w, t, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def inputs(n=150, d=24, v=97, dtype=torch.float32, ignored=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(v, d, generator=g, dtype=dtype) * 0.5
    t = torch.randint(0, v, (n,), generator=g)
    if ignored:
        t[::7] = -1  # minGPT's ignore_index, among the rows
    return h, w, t


@pytest.mark.parametrize("chunk", [1, 7, 64, 149, 150, 1000])  # most do not divide the 150 rows
def test_chunked_loss_and_gradients_equal_the_plain_ones_exactly_in_fp64(chunk):
    h, w, t = inputs(dtype=torch.float64)
    ref = loss_and_grads(plain, h, w, t)
    got = loss_and_grads(linear_cross_entropy, h, w, t, chunk=chunk)
    assert got[0].dtype == torch.float64
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[1][::7], torch.zeros_like(got[1][::7]))  # ignored rows: no gradient


@pytest.mark.parametrize("chunk", [5, 32, 256])
def test_chunked_loss_equals_the_plain_one_in_fp32(chunk):
    h, w, t = inputs()
    (l1, gh1, gw1), (l2, gh2, gw2) = (
        loss_and_grads(linear_cross_entropy, h, w, t, chunk=chunk),
        loss_and_grads(plain, h, w, t),
    )
    assert l1.dtype == torch.float32
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh1, gh2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw1, gw2, rtol=1e-5, atol=1e-6)


def test_at_gpt2s_vocabulary_a_few_rows():
    h, w, t = inputs(n=40, d=32, v=50257, seed=1)
    w = w * 0.1
    got = loss_and_grads(linear_cross_entropy, h, w, t, chunk=16)
    ref = loss_and_grads(plain, h, w, t)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-7)


def matmuls(fn) -> dict[str, int]:
    """How many aten::mm / aten::addmm_ calls ``fn`` makes (the profiler sees every op)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    counts = {e.key: e.count for e in prof.key_averages()}
    return {k: counts.get(k, 0) for k in ("aten::mm", "aten::addmm_")}


def test_without_a_gradient_only_the_loss_is_computed():
    h, w, t = inputs(n=100, ignored=False)
    hg, wg = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.no_grad():
        loss = linear_cross_entropy(hg, wg, t, chunk=30)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, plain(h, w, t), rtol=1e-5, atol=1e-6)
    chunks = 4  # ceil(100 / 30)

    def evaluate():
        with torch.no_grad():
            linear_cross_entropy(hg, wg, t, chunk=30)

    assert matmuls(evaluate) == {"aten::mm": chunks, "aten::addmm_": 0}  # the logits alone
    both = matmuls(lambda: linear_cross_entropy(hg, wg, t, chunk=30))
    assert both == {"aten::mm": 2 * chunks, "aten::addmm_": chunks}  # logits, dL/dh, dL/dW
    frozen = matmuls(lambda: linear_cross_entropy(hg, w, t, chunk=30))  # the head needs none
    assert frozen == {"aten::mm": 2 * chunks, "aten::addmm_": 0}


def test_every_row_ignored_is_nan_as_cross_entropy_and_the_incoming_gradient_scales():
    h, w, t = inputs(n=10)
    t[:] = -1
    assert torch.isnan(linear_cross_entropy(h, w, t, chunk=4)) and torch.isnan(plain(h, w, t))
    h, w, t = inputs(dtype=torch.float64)
    for fn, kw in ((plain, {}), (linear_cross_entropy, {"chunk": 8})):
        hg = h.clone().requires_grad_()
        (3.5 * fn(hg, w, t, **kw)).backward()
        if fn is plain:
            ref = hg.grad
    torch.testing.assert_close(hg.grad, ref, rtol=1e-12, atol=1e-12)


def test_under_bf16_autocast_the_matmuls_run_in_bf16_and_the_loss_is_fp32():
    h, w, t = inputs(n=128, d=64, v=512, ignored=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, h, w, t, chunk=48)
        ref = loss_and_grads(plain, h, w, t)
    exact = loss_and_grads(plain, h, w, t)  # fp32
    assert fused[0].dtype == torch.float32 and fused[1].dtype == fused[2].dtype == torch.float32
    torch.testing.assert_close(fused[0], ref[0], rtol=2e-3, atol=2e-3)
    for a, b in zip(fused[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())
    # bf16 shows: the fused loss is off fp32 by what bf16 rounding gives, not by fp32's
    assert 1e-5 < (fused[0] - exact[0]).abs().item() < 5e-2


def tiny_model(**over) -> GPT:
    cfg = get_default_config().model
    cfg.model_type, cfg.n_layer, cfg.n_head, cfg.n_embd = "", 2, 2, 16
    for k, v in over.items():
        setattr(cfg, k, v)
    return GPT(cfg, vocab_size=101, block_size=16, seed=5)


@pytest.mark.parametrize("tie", [False, True])
def test_the_gpts_fused_loss_gives_the_plain_losss_gradients(tie):
    idx = torch.randint(0, 101, (3, 16), generator=torch.Generator().manual_seed(0))
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -1
    grads = []
    for fused in (False, True):
        m = tiny_model(fused_loss=fused, loss_chunk=10, tie_weights=tie)
        logits, loss = m(idx, targets)
        assert (logits is None) == fused
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_tied_weights_are_one_parameter_counted_initialized_and_decayed_once():
    untied, tied = tiny_model(), tiny_model(tie_weights=True)
    assert tied.lm_head.weight is tied.wte.weight and untied.lm_head.weight is not untied.wte.weight
    names = [n for n, _ in tied.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names
    vd = 101 * 16
    assert tied.num_params() == untied.num_params() - vd
    # the shared matrix counts as the lm_head: the matmul costs 6 V d per token all the same
    assert tied.num_params(non_embedding=True) == untied.num_params(non_embedding=True)
    assert tied.flops_per_token() == untied.flops_per_token()
    # drawn once, as wte.weight of the same seed: the untied model's embedding
    assert torch.equal(tied.wte.weight, untied.wte.weight)
    assert tied.init_fingerprint["wte.weight"] == untied.init_fingerprint["wte.weight"]
    assert "lm_head.weight" not in tied.init_fingerprint and "lm_head.weight" in untied.init_fingerprint
    info = tied.describe()
    assert info["tie_weights"] is True and untied.describe()["tie_weights"] is False
    assert info["n_params"] == tied.num_params()
    opt = tied.configure_optimizer(get_default_config().trainer)
    decay, no_decay = (list(map(id, g["params"])) for g in opt.param_groups)
    assert id(tied.wte.weight) in decay and id(tied.wte.weight) not in no_decay
    assert sorted(decay + no_decay) == sorted(map(id, tied.parameters()))  # each once
    # a checkpoint round trip keeps the one matrix
    again = tiny_model(tie_weights=True)
    with torch.no_grad():
        again.wte.weight.zero_()
    again.load_state_dict(tied.state_dict())
    assert again.lm_head.weight is again.wte.weight and torch.equal(again.wte.weight, tied.wte.weight)


def test_a_tied_matrix_gets_the_gradient_of_both_its_uses():
    tied = tiny_model(tie_weights=True, fused_loss=False)
    untied = tiny_model(fused_loss=False)
    with torch.no_grad():
        untied.lm_head.weight.copy_(untied.wte.weight)
    idx = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(1))
    for m in (tied, untied):
        m(idx, idx)[1].backward()
    both = untied.wte.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(tied.wte.weight.grad, both, rtol=1e-5, atol=1e-7)


def test_precision_resolution_is_a_function_of_the_device_and_the_cpus_flags(tmp_path):
    assert resolve_precision("auto", "cpu", flags=set()) == "fp32"  # e.g. AMD Zen 1-3
    assert resolve_precision("auto", "cpu", flags={"avx2", "avx512f"}) == "fp32"
    assert resolve_precision("auto", "cpu", flags={"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", flags={"amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_precision("auto", "cuda", flags=set()) == "bf16"
    assert resolve_precision("bf16", "cpu", flags=set()) == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "absent") == frozenset()  # e.g. macOS: auto is fp32 there


def test_trainer_amp_is_replaced_by_trainer_precision_with_a_clear_error():
    with pytest.raises(ConfigError, match="'trainer.amp' was replaced by trainer.precision"):
        parse_value("trainer.amp", "True")
    with pytest.raises(ConfigError, match="one of 'auto', 'bf16', 'fp32'"):
        parse_value("trainer.precision", "fp16")


def old_config(amp: bool, device: str) -> dict:
    """A config.json of reatt before trainer.precision: trainer.amp, no meta.precision."""
    cfg = get_default_config().to_dict()
    del cfg["trainer"]["precision"]
    for key in ("tie_weights", "fused_loss", "loss_chunk"):
        del cfg["model"][key]
    cfg["trainer"]["amp"] = amp
    cfg["meta"] = {"device": device}
    return cfg


def test_an_older_run_dirs_trainer_amp_maps_to_the_precision_it_trained_in():
    assert legacy_precision(old_config(True, "NVIDIA A100-SXM4-80GB")) == "bf16"
    assert legacy_precision(old_config(True, "cpu")) == "fp32"  # that reatt: no autocast on CPU
    assert legacy_precision(old_config(False, "NVIDIA H100")) == "fp32"
    assert recorded_precision({"meta": {"precision": "bf16"}}) == "bf16"
    assert recorded_precision({"meta": {}}) is None
    # resumed under today's defaults: amp=True reads as 'auto' (kept at its recorded precision)
    assert config_differences(old_config(True, "cpu"), get_default_config()) == []
    cfg = get_default_config()
    assert config_differences(old_config(False, "cpu"), cfg) == [
        "trainer.precision: 'fp32' (trainer.amp=False) -> 'auto'"
    ]
    cfg.trainer.precision = "fp32"
    assert config_differences(old_config(False, "cpu"), cfg) == []
    cfg.model.tie_weights = True  # absent before: it was untied
    assert config_differences(old_config(False, "cpu"), cfg) == ["model.tie_weights: False -> True"]


SPEC = """
[study]
name = "p"
out_dir = "{out}"
[base]
model.model_type = "gpt-nano"
{base}
[features]
rope = {{ "model.rope" = true }}
{feature}
"""


def spec_file(tmp_path: Path, base: str = "", feature: str = "") -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(textwrap.dedent(SPEC.format(out=tmp_path / "out", base=base, feature=feature)))
    return path


def test_plan_refuses_variants_of_different_precision_or_loss(tmp_path):
    spec = load_spec(spec_file(tmp_path, base='trainer.precision = "fp32"'))  # all alike: fine
    assert {j.overrides["trainer.precision"] for j in spec.jobs()} == {"fp32"}
    with pytest.raises(SpecError) as e:
        load_spec(spec_file(tmp_path, feature='fp32 = { "trainer.precision" = "fp32" }'))
    assert "variant 'fp32' (run 'fp32') has trainer.precision = 'fp32'" in str(e.value)
    assert "variant 'baseline' has 'auto'" in str(e.value)
    with pytest.raises(SpecError, match="variant 'plain' .* model.fused_loss = False"):
        load_spec(spec_file(tmp_path, feature='plain = { "model.fused_loss" = false }'))


def test_report_flags_runs_of_different_recorded_precision():
    def run(name, variant, **meta):
        return SimpleNamespace(name=name, variant=variant, config={"meta": meta})

    same = [run("a", "baseline", precision="fp32"), run("b", "rope", device="cpu")]
    same[1].config["trainer"] = {"amp": True}  # older reatt on CPU: fp32
    assert incomparable(same) == []
    mixed = [run("a", "baseline", precision="bf16"), run("b", "rope", precision="fp32")]
    assert incomparable(mixed) == ["precision differs (baseline: bf16; rope: fp32)"]
    assert incomparable_note(incomparable(mixed)).startswith(
        "NOT COMPARABLE: the held-out NLLs were measured in different precisions"
    )


TINY = [
    "--data.block_size=32",
    "--trainer.batch_size=4",
    "--trainer.eval_interval=4",
    "--trainer.eval_windows=8",
    "--trainer.log_interval=1",
    "--trainer.ckpt_interval=0",
    "--trainer.max_iters=4",
    "--trainer.learning_rate=3e-3",
    "--model.loss_chunk=48",  # 128 rows a step: chunks of 48, 48 and 32
]


def losses(work_dir: Path) -> list[list[float]]:
    lines = (work_dir / "loss.csv").read_text().splitlines()[1:]
    return [[float(x) for x in line.split(",")[1:3] if x] for line in lines]


@pytest.mark.slow
def test_training_with_the_fused_loss_equals_training_with_the_plain_one(tmp_path):
    runs = {}
    for fused in (True, False):
        wd = tmp_path / f"fused-{fused}"
        argv = [*TINY, f"--system.work_dir={wd}", f"--model.fused_loss={fused}", "--trainer.precision=fp32"]
        assert main(argv) == 0
        runs[fused] = losses(wd)
    assert len(runs[True]) == 5  # steps 0 to 4
    for a, b in zip(runs[True], runs[False], strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)  # loss.csv keeps 6 decimals
    meta = json.loads((tmp_path / "fused-True" / "config.json").read_text())["meta"]
    final = FinalRecord.from_json(json.loads((tmp_path / "fused-True" / "final.json").read_text()))[0]
    assert meta["precision"] == final.precision == "fp32"
    assert final.mfu is None  # no peak FLOP/s for a CPU, ever


@pytest.mark.slow
def test_auto_is_resolved_at_the_first_start_recorded_and_kept_on_resume(tmp_path):
    wd = tmp_path / "auto"
    argv = [*TINY, f"--system.work_dir={wd}"]  # trainer.precision: 'auto', the default
    assert main(argv) == 0
    started = json.loads((wd / "config.json").read_text())
    resolved = started["meta"]["precision"]
    assert resolved == resolve_precision("auto", "cpu")  # bf16 on a CPU with AMX/AVX512-BF16
    assert json.loads((wd / "final.json").read_text())["precision"] == resolved
    # as if the first start had been on a machine that resolves 'auto' the other way
    other = "fp32" if resolved == "bf16" else "bf16"
    started["meta"]["precision"] = other
    (wd / "config.json").write_text(json.dumps(started))
    (wd / "final.json").unlink()  # not completed: the next start resumes from ckpt.pt
    assert main(argv) == 0  # at its last step: evaluates again, in the precision it started in
    assert json.loads((wd / "final.json").read_text())["precision"] == other
