"""The config tree: declared keys, typed overrides, helpful errors."""

import json
import subprocess
import sys

import pytest

from reatt.errors import ConfigError
from reatt.training.config import CfgNode, check_config, config_from_dict, get_default_config, parse_value
from reatt.training.schema import SCHEMA, closest_keys


def test_tree_has_the_four_nodes_and_every_key_documented():
    cfg = get_default_config()
    assert set(cfg.to_dict()) == {"system", "data", "model", "trainer"}
    assert len(dict(cfg.flat())) == len(SCHEMA)
    assert all(spec.help.strip() for spec in SCHEMA.values())
    check_config(cfg)  # the defaults are a valid config


def test_merge_from_args_lab_style():
    cfg = get_default_config()
    cfg.merge_from_args(
        [
            "--data.file_path=/home/tbday/minGPT/pile_data_10_first_10.jsonl",
            "--data.block_size=256",
            "--model.model_type='gpt-nano'",
            "--trainer.batch_size=1",
            "--trainer.max_iters=1000",
            "--trainer.num_workers=0",
            "--system.work_dir=./out/reatt_smoke",
            "--model.swiglu=True",
            "--trainer.betas=(0.9,0.99)",
            "--trainer.learning_rate=1e-3",
        ]
    )
    assert cfg.data.file_path == "/home/tbday/minGPT/pile_data_10_first_10.jsonl"
    assert cfg.data.block_size == 256 and cfg.model.model_type == "gpt-nano"
    assert cfg.model.swiglu is True and cfg.trainer.betas == (0.9, 0.99)
    assert cfg.trainer.learning_rate == 1e-3


@pytest.mark.parametrize(
    "key,text,value",
    [
        ("trainer.max_iters", "1e3", 1000),  # integral float for an int key
        ("trainer.learning_rate", "1", 1.0),  # int for a float key
        ("model.rope", "true", True),
        ("model.rope", "False", False),
        ("data.tokenizer", "123", "123"),  # str keys keep the text
        ("system.work_dir", "'out/a b'", "out/a b"),
        ("system.work_dir", "True", "True"),
    ],
)
def test_parse_value(key, text, value):
    got = parse_value(key, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "arg,message",
    [
        ("--trainer.max_iters=abc", "trainer.max_iters='abc': expected an int"),
        ("--trainer.max_iters=1.5", "trainer.max_iters=1.5: expected an int"),
        ("--model.rope=1", "model.rope=1: expected a bool (True or False)"),
        ("--trainer.learning_rate=fast", "trainer.learning_rate='fast': expected a finite float"),
        ("--trainer.learning_rate=1e999", "trainer.learning_rate=inf: expected a finite float"),
        ("--trainer.betas=(0.9,float('nan'))", "trainer.betas=\"(0.9,float('nan'))\": expected a tuple"),
        ("--trainer.betas=0.9", "trainer.betas=0.9: expected a tuple of 2 numbers"),
        ("--data.split=valid", "data.split='valid': expected one of 'train', 'test'"),
        ("trainer.max_iters=3", "expected --key=value"),
        ("--trainer.max_iters", "expected --key=value"),
    ],
)
def test_bad_values_name_key_value_and_type(arg, message):
    with pytest.raises(ConfigError) as e:
        get_default_config().merge_from_args([arg])
    assert message in str(e.value)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as e:
        get_default_config().merge_from_args(["--trainer.warmup=100"])
    assert "unknown config key 'trainer.warmup'" in str(e.value)
    assert "trainer.warmup_steps" in str(e.value)
    assert closest_keys("model.use_cosine")[0] == "trainer.use_cosine"  # right leaf, wrong node
    assert "model.swiglu" in closest_keys("model.swiglue")
    with pytest.raises(ConfigError, match="valid keys start with"):
        get_default_config().merge_from_args(["--zzz.qqq=1"])


def test_check_config_cross_key_errors():
    cfg = get_default_config()
    cfg.merge_from_args(
        [
            "--model.model_type=gpt-huge",
            "--data.test_size=1.5",
            "--trainer.min_lr=1.0",
            "--trainer.device=tpu",
            "--trainer.max_iters=0",
        ]
    )
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    for part in (
        "model.model_type='gpt-huge'",
        "data.test_size=1.5",
        "trainer.min_lr=1.0",
        "trainer.device='tpu'",
        "trainer.max_iters=0 must be > 0",
    ):
        assert part in msg
    cfg = get_default_config()
    cfg.merge_from_args(["--data.split=test", "--trainer.betas=(0.9,1.5)", "--trainer.warmup_steps=2000"])
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert "data.split='test': the training program trains on the 'train' split" in msg
    assert "trainer.betas=(0.9, 1.5): each must be in [0, 1)" in msg
    assert "trainer.warmup_steps=2000 exceeds trainer.max_iters=1000" in msg
    explicit = get_default_config()
    explicit.merge_from_args(
        ["--model.model_type=", "--model.n_layer=2", "--model.n_head=3", "--model.n_embd=10"]
    )
    with pytest.raises(ConfigError, match="n_embd=10 must be divisible by model.n_head=3"):
        check_config(explicit)
    rope_odd = get_default_config()
    rope_odd.merge_from_args(["--model.n_head=16", "--model.rope=True"])  # 48/16 = 3
    with pytest.raises(ConfigError, match="even head size"):
        check_config(rope_odd)


def test_round_trip_through_json():
    cfg = get_default_config()
    cfg.merge_from_args(["--model.rope=True", "--trainer.betas=(0.8,0.9)"])
    again = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again, CfgNode)


def run_train(*args):
    return subprocess.run(
        [sys.executable, "-m", "reatt.train", *args], capture_output=True, text=True, timeout=60
    )


def test_train_cli_help_lists_every_key():
    r = run_train("--help")
    assert r.returncode == 0
    for key in SCHEMA:
        assert key in r.stdout


def test_train_cli_bad_key_exits_2_without_traceback(tmp_path):
    r = run_train("--trainer.max_itres=5", f"--system.work_dir={tmp_path / 'run'}")
    assert r.returncode == 2
    assert r.stderr.startswith(
        "error: unknown config key 'trainer.max_itres'; did you mean 'trainer.max_iters'"
    )
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()
    r = run_train("--trainer.max_iters=abc")
    assert r.returncode == 2 and "expected an int" in r.stderr and "Traceback" not in r.stderr


def test_an_int_beyond_64_bits_is_refused_naming_the_key():
    """The database and torch hold 64 bits: a larger seed would fail deep inside, or wrap."""
    with pytest.raises(
        ConfigError, match=r"system.seed=1180591620717411303424: expected an int of at most 64 bits"
    ):
        get_default_config().merge_from_args([f"--system.seed={2**70}"])
    huge = "9" * 5000  # more digits than Python converts: still one clear line
    with pytest.raises(ConfigError, match=r"trainer.max_iters='9999.*…: expected an int"):
        get_default_config().merge_from_args([f"--trainer.max_iters={huge}"])
