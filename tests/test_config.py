import pytest

from lcdata.config import ConfigError, load_config, parse_config


def test_defaults_fill_in(base_cfg):
    cfg = parse_config(base_cfg())
    assert cfg.tokenize.loss_on == "all" and cfg.pack.oversize == "drop"


def test_unknown_top_level_key_is_named(base_cfg):
    with pytest.raises(ConfigError, match="unknown key `sequence_length`"):
        parse_config(base_cfg(sequence_length=10))


def test_unknown_nested_key_is_named(base_cfg):
    with pytest.raises(ConfigError, match=r"unknown key `pack.seqlen`"):
        parse_config(base_cfg(pack={"seqlen": 4096}))


def test_unknown_task_key_is_named(base_cfg):
    with pytest.raises(ConfigError, match=r"unknown key `tasks.0.needles.n_needle`"):
        parse_config(base_cfg(tasks=[{"kind": "needles", "n_needle": 3}]))


def test_bucket_larger_than_seq_len(base_cfg):
    with pytest.raises(ConfigError, match="exceeds `pack.seq_len`"):
        parse_config(base_cfg(assemble={"buckets": [8192]}, pack={"seq_len": 4096}))


def test_generic_source_needs_path(base_cfg):
    with pytest.raises(ConfigError, match="needs `path`"):
        parse_config(base_cfg(sources=[{"name": "x", "kind": "jsonl"}]))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_round_trip(tmp_path, base_cfg):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(base_cfg()))
    assert load_config(p).pack.seq_len == 2048
