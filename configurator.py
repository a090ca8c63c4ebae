"""
Configuration for every nanoroots script: defaults, then config files, then --key=value.

    python train.py config/shakespeare_char.py --batch_size=32 --compile=False

A script declares its defaults as a plain dict and calls `configure(DEFAULTS, argv)`. Config files
are ordinary Python files whose top-level assignments override the defaults; `--key=value`
overrides are applied afterwards and parsed with `ast.literal_eval`. Every value must have the type
of its default (an int where a float is expected is fine), and an unknown key is an error that
names the closest valid keys. Unlike nanoGPT's exec'd globals, the result is a plain namespace that
tests and tools can build and inspect.
"""

import ast
import difflib
import functools
import os
import sys
import types

TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes"}, {"false", "0", "no"}


class NanorootsError(Exception):
    """A problem the user can fix: a bad setting, unusable data, a missing or foreign checkpoint. Every
    error class of the project derives from it, and every script's main (wrapped by `script_main`)
    prints its message as one line `<script>: <message>` and exits with status 1 instead of a traceback."""


class ConfigError(NanorootsError):
    """A bad key or value."""


def script_main(main):
    """Decorate a script's main(argv=None): a NanorootsError becomes `<script>.py: <message>` and exit code 1."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except NanorootsError as e:
            raise SystemExit(f"{os.path.basename(main.__code__.co_filename)}: {e}") from None
    return run


def file_or_text(value, what="text"):
    """A command-line value that is either the text itself or FILE:<path> naming a file that holds it."""
    if not value.startswith("FILE:"):
        return value
    path = value[len("FILE:"):]
    if not os.path.isfile(path):
        raise ConfigError(f"{what} file {path} not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _closest(key, valid):
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else " (run with --help to list every key)"


def coerce(key, value, default):
    """Check `value` against the type of `default` and convert where that is lossless."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):  # before int: bool is a subclass of int
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).lower() in TRUE_WORDS | FALSE_WORDS:
            return str(value).lower() in TRUE_WORDS
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    elif isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool)):
        return value
    raise ConfigError(f"{key}={value!r} has type {type(value).__name__}, "
                      f"but {key} expects {type(default).__name__} (default {default!r})")


def parse_value(raw, default):
    """'3' -> 3, 'True' -> True, 'out-x' -> 'out-x'. Strings stay strings when the default is a str."""
    if isinstance(default, str):
        return raw
    if isinstance(default, bool) and raw.lower() in TRUE_WORDS | FALSE_WORDS:
        return raw.lower() in TRUE_WORDS
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def read_config_file(path):
    """Run a config file and return its top-level assignments (names starting with _ are private)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; config files live in config/ (e.g. config/shakespeare_char.py)")
    namespace = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        source = f.read()
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg}; a config file holds Python assignments such as "
                          f"batch_size = 32") from None
    except Exception as e:  # a config file is user code: whatever it raises is the user's to fix, in one line
        raise ConfigError(f"{path} failed to run ({type(e).__name__}: {e}); a config file holds plain assignments") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType) and not callable(v)}


def usage(defaults, script):
    lines = [f"usage: python {script} [config/file.py ...] [--key=value ...]", "", "keys and defaults:"]
    width = max(len(k) for k in defaults)
    lines += [f"  --{k.ljust(width)} = {v!r}" for k, v in defaults.items()]
    return "\n".join(lines)


def configure(defaults, argv=None, default_config=None, positional=None, verbose=None, explicit=None):
    """
    Apply config files then --key=value overrides to a copy of `defaults`; return a namespace.

    default_config: a config file applied when argv names none (train.py's quick start).
    positional: the key that a bare word on the command line sets (prepare.py's recipe name).
    explicit: a set that receives the keys the command line set, by a config file it names or by
    --key=value (not by defaults or default_config): a resumed run takes every other key from its checkpoint.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "script.py"
    if "--help" in argv or "-h" in argv:
        print(usage(defaults, script))
        raise SystemExit(0)
    cfg = dict(defaults)
    files = [a for a in argv if not a.startswith("--") and a.endswith(".py")]
    words = [a for a in argv if not a.startswith("--") and not a.endswith(".py")]
    named = set(files)
    if not files and default_config:
        files = [default_config]
    if words and positional is None:
        raise ConfigError(f"unexpected argument {words[0]!r}: use --key=value or a config/*.py file")
    if len(words) > 1:
        raise ConfigError(f"only one {positional} may be given, got {words}")

    explicit = set() if explicit is None else explicit

    def set_key(key, value, origin):
        if key not in defaults:
            raise ConfigError(f"unknown config key {key!r} in {origin}{_closest(key, list(defaults))}")
        cfg[key] = coerce(key, value, defaults[key])
        if origin in named or origin == "the command line":
            explicit.add(key)

    for path in files:
        for key, value in read_config_file(path).items():
            set_key(key, value, path)
    if words:
        set_key(positional, words[0], "the command line")
    for arg in (a for a in argv if a.startswith("--")):
        key, eq, raw = arg[2:].partition("=")
        if not eq and isinstance(defaults.get(key), bool):
            eq, raw = "=", "True"  # a bare --flag switches a boolean on
        if not eq:
            raise ConfigError(f"{arg} has no value: write --{key}=VALUE")
        if key not in defaults:
            raise ConfigError(f"unknown config key {key!r}{_closest(key, list(defaults))}")
        set_key(key, parse_value(raw, defaults[key]), "the command line")
    if verbose is None:  # under torchrun only rank 0 prints
        verbose = os.environ.get("RANK", "0") == "0"
    if verbose:
        print("config: " + ", ".join(f"{k}={v!r}" for k, v in cfg.items()), flush=True)
    return types.SimpleNamespace(**cfg)
