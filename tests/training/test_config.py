"""training.config: TrainConfig's fields are the one source of the train and campaign options."""

import argparse
from dataclasses import asdict, fields

import pytest

from training.campaign import CAMPAIGN_OPTIONS, build_parser, campaign_config
from training.config import TrainConfig, config_values, option_fields
from training.data import DEFAULT_CONTENT_DIRS, DEFAULT_STYLE_DIRS
from training.losses import LossConfig, LossWeights
from training.train import add_arguments, config_from_args

# Every option `python -m training.train` had when argparse was written by hand, with its default.
TRAIN_FLAG_DEFAULTS = {
    "--arch": "a2k", "--load-size": 512, "--crop-size": 256, "--batch-size": 8, "--iters": 10_000, "--lr": 2e-4,
    "--constant-frac": 0.4, "--schedule-start": 0, "--style-weight": 10.0, "--a2k-weight": 1.25,
    "--content-weight": 1.0, "--seed": 0, "--workers": 2, "--threads": None, "--device": "auto",
    "--ckpt-every": 500, "--keep-checkpoints": 3, "--sample-every": 500, "--log-every": 10, "--pack": None,
    "--channels-last": "auto", "--bf16": "auto", "--bf16-trained": "auto", "--warmup-iters": 0,
    "--time-budget": None, "--init-weights": None, "--init-iteration": None, "--resume": None, "--export": None,
    "--manifest": None, "--version-tag": None,
}
TRAIN_SWITCHES = ("--run-dir", "--content-dir", "--style-dir", "--no-hflip", "--no-fused-encode", "--thread-tuning")


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_every_train_option_keeps_its_name_and_default():
    parser = _train_parser()
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    assert set(TRAIN_FLAG_DEFAULTS) | set(TRAIN_SWITCHES) <= set(by_flag)
    assert {flag: by_flag[flag].default for flag in TRAIN_FLAG_DEFAULTS} == TRAIN_FLAG_DEFAULTS
    assert by_flag["--run-dir"].required


def test_no_options_give_the_dataclass_defaults():
    cfg = config_from_args(_train_parser().parse_args(["--run-dir", "r"]))
    assert asdict(cfg) == asdict(TrainConfig(run_dir="r"))
    assert cfg.content_dirs == DEFAULT_CONTENT_DIRS and cfg.style_dirs == DEFAULT_STYLE_DIRS


def test_switches_repeats_and_choices_reach_the_config():
    parser = _train_parser()
    cfg = config_from_args(parser.parse_args([
        "--run-dir", "r", "--content-dir", "a", "--content-dir", "b", "--style-dir", "s", "--no-hflip",
        "--no-fused-encode", "--thread-tuning", "--threads", "3", "--pack", "p", "--bf16", "off", "--lr", "1e-3",
        "--a2k-weight", "0.5"]))
    assert cfg.content_dirs == ("a", "b") and cfg.style_dirs == ("s",)
    assert not cfg.hflip and not cfg.fused_encode and cfg.thread_tuning
    assert (cfg.threads, cfg.pack, cfg.bf16, cfg.lr, cfg.a2k_weight) == (3, "p", "off", 1e-3, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--run-dir", "r", "--channels-last", "sometimes"])  # choices come from the field


def test_every_option_field_has_help_and_every_loss_weight_is_an_option():
    names = {f.name for f in option_fields()}
    assert {f.name for f in fields(LossWeights)} <= names
    assert all(f.metadata["help"] for f in option_fields())
    # the config-only fields stay out of the command line
    assert not names & {"sample_contents", "sample_styles", "balance_style_dirs", "extra"}


def test_the_trainers_loss_config_takes_every_weight_of_the_run():
    cfg = TrainConfig(run_dir="r", style_weight=3.0, a2k_weight=0.25, content_weight=2.0)
    loss = LossConfig(kind="a2k", **cfg.loss_weights())
    assert loss.weights() == {"global_style": 3.0, "a2k": 0.25, "content": 2.0}


# Every option `python -m training.campaign` had when argparse was written by hand, with its default.
CAMPAIGN_FLAG_DEFAULTS = {
    "--state-dir": None, "--init-weights": None, "--pack": None, "--no-pack": False, "--iters": 12_000,
    "--schedule-start": 0, "--lr": 2e-4, "--style-weight": 10.0, "--a2k-weight": 1.25, "--crop-size": 128,
    "--load-size": 256, "--batch-size": 8, "--threads": None, "--warmup-iters": 50, "--ckpt-every": 25,
    "--sample-every": 250, "--seed": 0, "--content-dir": None, "--style-dir": None,
}


def test_the_campaign_generates_its_options_with_its_own_defaults(tmp_path):
    parser = build_parser()
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    assert {flag: by_flag[flag].default for flag in CAMPAIGN_FLAG_DEFAULTS} == CAMPAIGN_FLAG_DEFAULTS
    assert by_flag["--time-budget"].required
    args = parser.parse_args(["--time-budget", "60", "--style-weight", "5", "--content-dir", "c"])
    values = config_values(args, CAMPAIGN_OPTIONS)
    assert values["style_weight"] == 5.0 and values["content_dirs"] == ("c",)
    assert values["style_dirs"] == DEFAULT_STYLE_DIRS
    cfg = campaign_config(args, tmp_path, None)
    assert (cfg.iters, cfg.crop_size, cfg.load_size, cfg.warmup_iters) == (12_000, 128, 256, 50)
    assert cfg.thread_tuning and cfg.workers == 1 and cfg.keep_checkpoints == 4 and cfg.run_dir == str(tmp_path)
    assert campaign_config(parser.parse_args(["--time-budget", "1", "--threads", "1"]), tmp_path,
                           tmp_path).workers == 0
