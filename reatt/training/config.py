"""The configuration tree of a training run: every key declared once, typed and documented.

Users drive runs with minGPT-style overrides, as in the lab notes::

    python -m reatt.train --model.swiglu=True --trainer.max_iters=1000 --data.block_size=256

so the user-facing config is a nested ``CfgNode`` (alias ``CN``) with the nodes ``system``,
``data``, ``model`` and ``trainer``. Unlike minGPT's, every key is declared in
``reatt.training.schema.SCHEMA`` with its default (which fixes its type) and one line of help;
an unknown key is an error that names the closest valid keys, and a value of the wrong type is
an error that names the key, the value and the expected type. ``check_config`` holds the rules
that span several keys.

This module imports nothing heavy: ``reatt plan`` validates ablation specs with it.
"""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from reatt.errors import ConfigError
from reatt.rundir import is_number
from reatt.training.schema import MODEL_TYPES, NODES, SCHEMA, unknown_key_error


def shown(value: Any, width: int = 60) -> str:
    """``repr(value)`` for an error message, cut to ``width`` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (sys.get_int_max_str_digits)
        text = f"<an int of about {value.bit_length() * 0.30103:.0f} digits>"
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def coerce(key: str, value: Any, *, where: str = "") -> Any:
    """Check ``value`` against the declared type of ``key``; return it in that type.

    ints are accepted for float keys and integral floats (``1e3``) for int keys, within 64 bits;
    bool keys take True/False (and the strings true/false/yes/no, any case); str keys take any
    text.
    """
    if key not in SCHEMA:
        raise unknown_key_error(key, where)
    spec = SCHEMA[key]
    want = spec.default

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}{key}={shown(value)}: expected {expected}")

    if isinstance(want, bool):
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
            out = value.strip().lower() in ("true", "yes")
        else:
            raise bad("a bool (True or False)")
    elif isinstance(want, int):
        if isinstance(value, bool):
            raise bad("an int")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        else:
            raise bad("an int")
        if not is_number(out, (int,)):  # the database and torch take 64 bits
            raise bad("an int of at most 64 bits (between -2**63 and 2**63 - 1)")
    elif isinstance(want, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite float")
        out = float(value)
    elif isinstance(want, str):
        if not isinstance(value, str):
            raise bad("a string")
        out = value
    elif isinstance(want, tuple):
        ok = (
            isinstance(value, (tuple, list))
            and len(value) == len(want)
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )
        )
        if not ok:
            raise bad(f"a tuple of {len(want)} numbers, like {want}")
        out = tuple(float(v) for v in value)
    else:  # pragma: no cover - SCHEMA holds only the types above
        raise TypeError(f"unsupported default type for {key}")
    if spec.choices is not None and out not in spec.choices:
        raise bad("one of " + ", ".join(repr(c) for c in spec.choices))
    return out


def parse_value(key: str, text: str, *, where: str = "") -> Any:
    """Parse the text of a ``--key=text`` override: a Python literal, else the text itself.

    For string keys the text is kept verbatim unless it is a quoted string literal, so
    ``--data.tokenizer=123`` is the string "123" and ``--system.work_dir='out/a b'`` works.
    """
    if key not in SCHEMA:
        raise unknown_key_error(key, where)
    try:
        value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = text
    if isinstance(SCHEMA[key].default, str) and not isinstance(value, str):
        value = text
    return coerce(key, value, where=where)


def format_value(key: str, value: Any) -> str:
    """The text of a ``--key=text`` override that ``parse_value`` reads back as ``value``.

    Plain text for strings that read back unchanged (``gpt-nano``, paths); ``repr`` otherwise
    (numbers, bools, tuples, and strings that would be read as a quoted literal).
    """
    if isinstance(value, str) and parse_value(key, value) == value:
        return value
    return repr(value)


class CfgNode:
    """A node of the config tree; attributes are its keys or child nodes (minGPT's CN)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __getattr__(self, name: str) -> Any:
        """Only reached for a missing attribute (a typo in code): say which ones exist. Also
        tells type checkers that a node's attributes are dynamic."""
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"config node has no key {name!r}; it has: {', '.join(self.__dict__)}")

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __repr__(self) -> str:
        return f"CfgNode({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CfgNode) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The tree as nested plain dicts (tuples become lists, as in JSON)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, CfgNode):
                out[k] = v.to_dict()
            elif isinstance(v, tuple):
                out[k] = list(v)
            else:
                out[k] = v
        return out

    def flat(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted_key, value)`` for every leaf."""
        for k, v in self.__dict__.items():
            if isinstance(v, CfgNode):
                yield from v.flat(prefix + k + ".")
            else:
                yield prefix + k, v

    def get(self, key: str) -> Any:
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def set(self, key: str, value: Any, *, where: str = "") -> None:
        """Set a declared key, checking the value's type."""
        value = coerce(key, value, where=where)
        *parents, leaf = key.split(".")
        node: Any = self
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)

    def merge_from_dict(self, d: dict[str, Any], *, where: str = "") -> None:
        """Apply overrides given as ``{"model.swiglu": True}`` or nested ``{"model": {...}}``."""
        for key, value in flatten(d).items():
            self.set(key, value, where=where)

    def merge_from_args(self, args: Iterable[str]) -> None:
        """Apply command-line overrides of the form ``--key=value`` (e.g. ``--model.rope=True``)."""
        for arg in args:
            if not arg.startswith("--") or "=" not in arg:
                raise ConfigError(
                    f"cannot read argument {arg!r}: expected --key=value, e.g. --trainer.max_iters=1000"
                )
            key, text = arg[2:].split("=", 1)
            self.set(key, parse_value(key, text))


CN = CfgNode


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"rope": True}}`` -> ``{"model.rope": True}`` (dotted keys pass through)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def get_default_config() -> CfgNode:
    """A fresh tree holding every key's default."""
    root = CfgNode(**{n: CfgNode() for n in NODES})
    for key, spec in SCHEMA.items():
        node, leaf = key.split(".")
        setattr(getattr(root, node), leaf, spec.default)
    return root


def config_from_dict(d: dict[str, Any]) -> CfgNode:
    """Rebuild a tree from ``to_dict()`` output (e.g. a run's config.json), type-checked."""
    cfg = get_default_config()
    cfg.merge_from_dict({n: d[n] for n in NODES if n in d})
    return cfg


def model_dims(m: CfgNode) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of a ``model`` node: the model_type preset, with any
    explicit value overriding it."""
    preset = MODEL_TYPES.get(m.model_type, (0, 0, 0))
    return (m.n_layer or preset[0], m.n_head or preset[1], m.n_embd or preset[2])


def check_config(cfg: CfgNode) -> None:
    """Cross-key checks that no single key's type can express. Raises ConfigError."""
    m, t, d = cfg.model, cfg.trainer, cfg.data
    errors: list[str] = []
    if m.model_type and m.model_type not in MODEL_TYPES:
        errors.append(
            f"model.model_type={m.model_type!r}: expected one of {', '.join(MODEL_TYPES)} or '' "
            "(then set model.n_layer, model.n_head and model.n_embd)"
        )
    else:
        n_layer, n_head, n_embd = model_dims(m)
        for name, v in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
            if v <= 0:
                errors.append(f"model.{name} must be > 0 (set it, or choose a model.model_type)")
        if n_head > 0 and n_embd > 0 and n_embd % n_head:
            errors.append(f"model.n_embd={n_embd} must be divisible by model.n_head={n_head}")
        elif m.rope and n_head > 0 and n_embd > 0 and (n_embd // n_head) % 2:
            errors.append(f"model.rope needs an even head size; n_embd/n_head = {n_embd // n_head}")
    positive = {
        "data.block_size": d.block_size,
        "trainer.max_iters": t.max_iters,
        "trainer.batch_size": t.batch_size,
        "trainer.grad_accum_steps": t.grad_accum_steps,
        "trainer.eval_interval": t.eval_interval,
        "trainer.eval_windows": t.eval_windows,
        "trainer.log_interval": t.log_interval,
        "trainer.sample_tokens": t.sample_tokens,
        "model.norm_eps": m.norm_eps,
        "model.rope_base": m.rope_base,
        "trainer.learning_rate": t.learning_rate,
        "model.loss_chunk": m.loss_chunk,
    }
    errors += [f"{k}={v!r} must be > 0" for k, v in positive.items() if v <= 0]
    non_negative = {
        "model.swiglu_hidden": m.swiglu_hidden,
        "trainer.warmup_steps": t.warmup_steps,
        "trainer.sample_interval": t.sample_interval,
        "trainer.ckpt_interval": t.ckpt_interval,
        "trainer.num_workers": t.num_workers,
        "trainer.weight_decay": t.weight_decay,
        "trainer.grad_norm_clip": t.grad_norm_clip,
        "trainer.min_lr": t.min_lr,
        "trainer.prune_margin": t.prune_margin,
        "trainer.prune_after": t.prune_after,
        "system.num_threads": cfg.system.num_threads,
    }
    errors += [f"{k}={v!r} must be >= 0" for k, v in non_negative.items() if v < 0]
    for k in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
        if not 0.0 <= getattr(m, k) < 1.0:
            errors.append(f"model.{k}={getattr(m, k)!r} must be in [0, 1)")
    if t.grad_accum_steps > 0 and t.batch_size > 0 and t.batch_size % t.grad_accum_steps:
        errors.append(
            f"trainer.batch_size={t.batch_size} must be divisible by "
            f"trainer.grad_accum_steps={t.grad_accum_steps} (and by it x the number of ranks)"
        )
    if not 0.0 < d.test_size < 1.0:
        errors.append(f"data.test_size={d.test_size!r} must be between 0 and 1 (a fraction of documents)")
    if d.split != "train":
        errors.append(
            f"data.split={d.split!r}: the training program trains on the 'train' split and evaluates "
            "on 'test' (data.split is for code that builds a JSONLDataset itself)"
        )
    if not all(0.0 <= b < 1.0 for b in t.betas):
        errors.append(f"trainer.betas={t.betas!r}: each must be in [0, 1)")
    if t.warmup_steps > t.max_iters:
        errors.append(
            f"trainer.warmup_steps={t.warmup_steps} exceeds trainer.max_iters={t.max_iters}: "
            "the learning rate would never reach trainer.learning_rate"
        )
    if t.min_lr > t.learning_rate:
        errors.append(
            f"trainer.min_lr={t.min_lr!r} must not exceed trainer.learning_rate={t.learning_rate!r}"
        )
    if t.use_cosine and t.warmup_steps >= t.max_iters:
        errors.append(
            f"trainer.warmup_steps={t.warmup_steps} leaves no steps for the cosine decay "
            f"(trainer.max_iters={t.max_iters})"
        )
    dev = t.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        errors.append(f"trainer.device={dev!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not cfg.system.work_dir:
        errors.append("system.work_dir must not be empty")
    relative = [e for e in t.prune_siblings.split(os.pathsep) if e and not os.path.isabs(e)]
    if relative:  # resolved against wherever the job starts: a sibling silently never found
        errors.append(f"trainer.prune_siblings: {shown(relative[0])} is not an absolute run directory")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
