import pytest

from configurator import ConfigError, configure

DEFAULTS = dict(out_dir="out", batch_size=12, learning_rate=6e-4, compile=False, init_from="scratch", top_k=None)


def test_overrides_are_typed_like_defaults():
    cfg = configure(DEFAULTS, ["--batch_size=32", "--learning_rate=1e-3", "--out_dir=out-x", "--compile=True"])
    assert (cfg.batch_size, cfg.learning_rate, cfg.out_dir, cfg.compile) == (32, 1e-3, "out-x", True)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert configure(DEFAULTS, ["--learning_rate=1"]).learning_rate == 1.0
    assert isinstance(configure(DEFAULTS, ["--learning_rate=1"]).learning_rate, float)
    with pytest.raises(ConfigError, match="batch_size.*expects int"):
        configure(DEFAULTS, ["--batch_size=1.5"])


@pytest.mark.parametrize("raw,value", [("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False)])
def test_bool_spellings(raw, value):
    assert configure(DEFAULTS, [f"--compile={raw}"]).compile is value


def test_bare_flag_switches_a_bool_on():
    assert configure(DEFAULTS, ["--compile"]).compile is True
    with pytest.raises(ConfigError, match="has no value"):
        configure(DEFAULTS, ["--batch_size"])


def test_bad_bool_and_wrong_type_are_errors():
    with pytest.raises(ConfigError, match="compile"):
        configure(DEFAULTS, ["--compile=maybe"])
    with pytest.raises(ConfigError, match="batch_size"):
        configure(DEFAULTS, ["--batch_size=big"])


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        configure(DEFAULTS, ["--batchsize=3"])


def test_string_default_keeps_raw_text():
    # a value that looks like a number or a list stays a string when the default is a string
    assert configure(DEFAULTS, ["--init_from=123"]).init_from == "123"


def test_files_then_overrides(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nbatch_size = 7\nlearning_rate = math.pi\n_private = 3\n")
    cfg = configure(DEFAULTS, [str(f), "--batch_size=9"])
    assert cfg.batch_size == 9 and cfg.learning_rate == pytest.approx(3.14159265)


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("batch_sise = 7\n")
    with pytest.raises(ConfigError, match=r"batch_sise.*c\.py.*batch_size"):
        configure(DEFAULTS, [str(f)])


def test_default_config_applies_only_without_a_file(tmp_path):
    default, other = tmp_path / "default.py", tmp_path / "other.py"
    default.write_text("batch_size = 1\n")
    other.write_text("learning_rate = 0.5\n")
    assert configure(DEFAULTS, [], default_config=str(default)).batch_size == 1
    cfg = configure(DEFAULTS, [str(other)], default_config=str(default))
    assert cfg.batch_size == 12 and cfg.learning_rate == 0.5


def test_positional_word(tmp_path):
    assert configure(dict(recipe="", n=1), ["shakespeare", "--n=2"], positional="recipe").recipe == "shakespeare"
    with pytest.raises(ConfigError, match="unexpected argument"):
        configure(DEFAULTS, ["shakespeare"])


def test_none_default_accepts_any_value():
    assert configure(DEFAULTS, ["--top_k=50"]).top_k == 50


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        configure(DEFAULTS, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(f"--{k}" in out for k in DEFAULTS)
