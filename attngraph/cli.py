"""The `attngraph` command line: export, summarise, validate and run models.

    attngraph export model.py:build -o model.onnx --target ort
    attngraph summary model.py
    attngraph validate model.py --targets ort,decomposed --batch 2 --seq 7
    attngraph run model.onnx --repeat 20
    attngraph generate decoder.onnx --prompt "5 17 3" -n 32

A model file is a Python file; `FILE.py:NAME` names a module-level `ag.Model`, a tuple
`(model, params)`, a dict with keys `model` (and optionally `params`), or a function of no
arguments returning one of these. Without `:NAME` the CLI tries `build`, then `model`.

Every user mistake prints one `error: ...` line to stderr and exits with status 2; a failed
validation exits with status 1. Anything else is a bug in attngraph and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import os
import re
import sys
import time
import traceback
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from . import __version__
from ._errors import AttnGraphError
from ._export import export
from ._model import Model
from ._params import load_params
from ._registry import TARGETS
from ._types import FLOAT_DTYPES, Dim, TensorType, normalize_dtype
from ._validate import validate
from .runtime import Session, available_providers

DEFAULT_NAMES = ("build", "model")
FUSED_ATTENTION_OPS = frozenset({"MultiHeadAttention", "GroupQueryAttention", "Attention"})
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

Params = dict[str, np.ndarray]


class CLIError(Exception):
    """A user mistake that the command line itself detects (bad file, bad NAME, bad flag)."""


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become one `error: ...` line, not usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


# -- loading a model from a Python file -----------------------------------------------------


def split_spec(spec: str) -> tuple[str, str | None]:
    """`FILE.py:NAME` -> (FILE.py, NAME); `FILE.py` -> (FILE.py, None).

    Only a trailing `:identifier` counts as NAME, so `C:\\models\\m.py` stays a path.
    """
    path, sep, name = spec.rpartition(":")
    if sep and path and name.isidentifier():
        return path, name
    return spec, None


def _require_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"no such file {path!r} ({what})")
    if not os.path.isfile(path):
        raise CLIError(f"{path!r} is not a file ({what})")


@contextlib.contextmanager
def _module_from_file(path: str) -> Iterator[ModuleType]:
    """Execute a Python file as a throwaway module.

    The module sits in `sys.modules` and its folder on `sys.path` only while the `with` block
    runs (so the file can import its neighbours and define dataclasses); both are restored after.
    """
    abspath = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    mod_name = f"_attngraph_cli_{stem}"
    spec = importlib.util.spec_from_file_location(mod_name, abspath)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(abspath)
    previous = sys.modules.get(mod_name)
    sys.modules[mod_name] = module
    sys.path.insert(0, folder)
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - sorted into user mistake or bug below
            _raise_user_failure(exc, path, f"running {path}")
        yield module
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        if previous is None:
            sys.modules.pop(mod_name, None)
        else:
            sys.modules[mod_name] = previous


def _raise_user_failure(exc: Exception, path: str, doing: str) -> NoReturn:
    """Turn an exception from the user's code into a CLIError naming file:line.

    attngraph's own errors pass through unchanged. An exception whose innermost frame lies in
    attngraph but is not an AttnGraphError is a bug in attngraph: it propagates untouched.
    """
    if isinstance(exc, (AttnGraphError, CLIError)):
        raise exc
    if isinstance(exc, SyntaxError):
        where = f"{os.path.basename(exc.filename or path)}:{exc.lineno}"
        raise CLIError(f"{where}: SyntaxError: {exc.msg}") from None
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep):
        raise exc
    abspath = os.path.abspath(path)
    mine = [f for f in frames if os.path.abspath(f.filename) == abspath]
    frame = mine[-1] if mine else (frames[-1] if frames else None)
    where = f"{os.path.basename(frame.filename)}:{frame.lineno}" if frame else path
    raise CLIError(f"{where}: {type(exc).__name__}: {exc} (while {doing})") from None


def _candidates(module: ModuleType) -> list[str]:
    """Module-level names that look like a model or a model-building function."""
    out = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        defined_here = inspect.isfunction(value) and value.__module__ == module.__name__
        if defined_here or _as_model(value) is not None:
            out.append(key)
    return out


def _as_model(obj: Any) -> tuple[Model, Any] | None:
    """(model, params-or-None) when `obj` is one of the accepted shapes, else None."""
    if isinstance(obj, Model):
        return obj, None
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Model):
        return obj[0], obj[1]
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Model):
        return obj["model"], obj.get("params")
    return None


def _resolve(obj: Any, label: str, path: str) -> tuple[Model, Params | None]:
    if not isinstance(obj, Model) and callable(obj):
        try:
            required = [p.name for p in inspect.signature(obj).parameters.values()
                        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        except (TypeError, ValueError):
            required = []
        if required:
            raise CLIError(f"{label} needs argument(s) {required}; the CLI calls it with none "
                           "(give them defaults)")
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - sorted into user mistake or bug
            _raise_user_failure(exc, path, f"calling {label}")
        label = f"{label}()"
    found = _as_model(obj)
    if found is None:
        raise CLIError(f"{label} is of type {type(obj).__name__}; expected an ag.Model, a tuple "
                       "(model, params), a dict {'model': ..., 'params': ...} or a function "
                       "returning one")
    model, params = found
    if params is not None and not isinstance(params, Mapping):
        raise CLIError(f"{label} gives params of type {type(params).__name__}; expected a dict "
                       "name -> array")
    return model, (dict(params) if params is not None else None)


def load_model(spec: str) -> tuple[Model, Params | None]:
    """Load `FILE.py[:NAME]` and return (model, params given by the file or None)."""
    path, name = split_spec(spec)
    _require_file(path, "the model file, FILE.py[:NAME]")
    if not path.endswith(".py"):
        raise CLIError(f"{path!r} is not a Python file; pass the .py file that defines the "
                       "model (FILE.py[:NAME])")
    with _module_from_file(path) as module:
        names = (name,) if name else DEFAULT_NAMES
        for key in names:
            if hasattr(module, key):
                return _resolve(getattr(module, key), f"{path}:{key}", path)
        found = _candidates(module)
        hint = f" (it defines: {', '.join(found)})" if found else ""
        wanted = repr(name) if name else "neither 'build' nor 'model'"
        if name:
            raise CLIError(f"{path} has no module-level name {wanted}{hint}")
        raise CLIError(f"{path} defines {wanted}; name the model as {path}:NAME{hint}")


def model_and_params(args: argparse.Namespace) -> tuple[Model, Params]:
    """The model of `args.model` and its params: --params, else the file's, else init(seed)."""
    model, params = load_model(args.model)
    if args.params is not None:
        return model, load_params(args.params, model)
    return model, params if params is not None else model.init(seed=args.seed)


# -- random feeds ---------------------------------------------------------------------------


def dim_size(dim: Dim, batch: int, seq: int) -> int:
    """A concrete size for a declared dim: ints as given, `*batch*` -> batch, others -> seq."""
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and ("batch" in dim.lower() or dim.lower() in ("b", "n")):
        return batch
    return seq


def random_feeds(types: Mapping[str, TensorType], *, batch: int, seq: int, seed: int,
                 vocab: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random feeds: floats ~ N(0, 1), ints in [0, vocab) (vocab 2 when not known, e.g.
    for masks), bools all True (attend everywhere)."""
    rng = np.random.default_rng(seed)
    vocab = vocab or {}
    feeds = {}
    for name, ttype in types.items():
        shape = tuple(dim_size(d, batch, seq) for d in ttype.shape)
        if ttype.dtype in FLOAT_DTYPES:
            feeds[name] = rng.standard_normal(shape).astype(ttype.dtype)
        elif ttype.dtype == "bool":
            feeds[name] = np.ones(shape, dtype=bool)
        else:
            feeds[name] = rng.integers(0, vocab.get(name, 2), shape).astype(ttype.dtype)
    return feeds


def model_vocab(model: Model) -> dict[str, int]:
    """Input name -> the smallest vocab_size of the embeddings that read it directly."""
    keys = {v.node: k for k, v in model.inputs.items()}
    vocab: dict[str, int] = {}
    for node in model.nodes:
        src = node.inputs[0] if node.op == "embedding" and node.inputs else None
        if src is not None and src.node in keys:
            key = keys[src.node]
            vocab[key] = min(vocab.get(key, node.attrs["vocab_size"]), node.attrs["vocab_size"])
    return vocab


def onnx_vocab(path: str) -> dict[str, int]:
    """Input name -> rows of the table an ONNX `Gather(initializer, input)` looks ids up in."""
    import onnx  # only to read the graph; attngraph's exporter is the one that builds protos

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when the session loads it
        return {}
    tables = {t.name: t.dims[0] for t in proto.graph.initializer if t.dims}
    inputs = {i.name for i in proto.graph.input}
    vocab: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in tables \
                and node.input[1] in inputs:
            rows = int(tables[node.input[0]])
            vocab[node.input[1]] = min(vocab.get(node.input[1], rows), rows)
    return vocab


def load_feeds(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz archive, read without pickle."""
    _require_file(path, "--inputs")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise CLIError(f"--inputs {path!r} holds a single array; expected an .npz archive "
                           "of name -> array (np.savez)")
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CLIError(f"--inputs {path!r} is not a readable .npz archive: {exc}") from None


def describe(arrays: Mapping[str, np.ndarray]) -> str:
    """`x f32[2,7,24], ids i64[2,7]`."""
    return ", ".join(f"{k} {_type_of(v)}" for k, v in arrays.items())


def _type_of(array: np.ndarray) -> TensorType:
    dtype = normalize_dtype(array.dtype) or array.dtype.name
    return TensorType(dtype, tuple(int(d) for d in array.shape))


# -- commands -------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """Export to ONNX and print one line: path, target, opset, nodes, fused attention, size."""
    model, params = model_and_params(args)
    proto = export(model, params, args.output, target=args.target, opset=args.opset,
                   dtype=args.dtype, kv_cache=args.kv_cache)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    fused = sum(n.op_type in FUSED_ATTENTION_OPS for n in proto.graph.node)
    size = os.path.getsize(args.output)
    if os.path.exists(args.output + ".data"):
        size += os.path.getsize(args.output + ".data")
    print(f"wrote {args.output}: target {args.target}, opset {opset}, "
          f"{len(proto.graph.node)} nodes, {fused} fused attention, {_human_size(size)}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the model's layer table."""
    model, _ = load_model(args.model)
    print(model.summary())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Compare each target with the reference on random feeds; exit 1 when any check fails."""
    model, params = model_and_params(args)
    feeds = random_feeds(model.input_types, batch=args.batch, seq=args.seq, seed=args.seed,
                         vocab=model_vocab(model))
    print(f"feeds: {describe(feeds)}")
    report = validate(model, params, feeds, args.targets, dtype=args.dtype,
                      providers=args.providers)
    print(report)
    return 0 if report.passed else 1


def cmd_analyze(args: argparse.Namespace) -> int:
    """Per-head attention statistics on random feeds; heat maps of one layer to a PNG."""
    from .analysis import analyze, plot_attention

    model, params = model_and_params(args)
    feeds = random_feeds(model.input_types, batch=1, seq=args.seq, seed=args.seed,
                         vocab=model_vocab(model))
    report = analyze(model, params, feeds)
    print(report)
    if args.output:
        path = plot_attention(report, args.output, layer=args.layer)
        print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run an .onnx file on random or given feeds; print output types and median latency."""
    _require_file(args.onnx, "the .onnx model to run")
    session = Session(args.onnx, args.providers)
    if args.inputs is not None:
        feeds = load_feeds(args.inputs)
    else:
        feeds = random_feeds(session.inputs, batch=args.batch, seq=args.seq, seed=args.seed,
                             vocab=onnx_vocab(args.onnx))
    print(f"feeds: {describe(feeds)}")
    outputs = session.run(feeds)  # also the warm-up run
    for name, value in outputs.items():
        print(f"{name}: {_type_of(np.asarray(value))}")
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        session.run(feeds)
        times.append(time.perf_counter() - start)
    providers = ",".join(session.session.get_providers())
    print(f"latency: median {1e3 * float(np.median(times)):.3f} ms over {args.repeat} run(s) "
          f"({providers})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate from one or more prompts; tokens stream to stdout as they come (one line per
    prompt), speed goes to stderr."""
    from .generation import generate_stream

    prompts = [_token_list(text) for text in args.prompt]
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, prompt in enumerate(prompts):  # left padding
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    if args.model.endswith(".onnx"):
        _require_file(args.model, "the .onnx decoder")
        source: Any = Session(args.model, args.providers)
        params = None
    else:
        model, params = model_and_params(args)
        if args.target == "reference":
            source = model
        else:
            source = Session(export(model, params, target=args.target, kv_cache=True),
                             args.providers)
            params = None
    stream = generate_stream(source, ids, args.max_new_tokens, params=params,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             seed=args.seed, eos_token_id=args.eos, attention_mask=mask)
    start, steps, rows = time.perf_counter(), 0, [list(p) for p in prompts]
    for tokens in stream:
        steps += 1
        for row, token in enumerate(tokens):
            rows[row].append(int(token))
        if len(prompts) == 1:
            print(("" if steps > 1 else " ".join(map(str, prompts[0])) + " |") + f" {tokens[0]}",
                  end="", flush=True)
    elapsed = time.perf_counter() - start
    if len(prompts) == 1:
        print()
    else:
        for tokens_of_row in rows:
            print(" ".join(map(str, tokens_of_row)))
    print(f"{steps} step(s) x {len(prompts)} prompt(s) in {elapsed:.3f} s "
          f"({steps * len(prompts) / max(elapsed, 1e-9):.1f} tok/s)", file=sys.stderr)
    return 0


def _token_list(text: str) -> list[int]:
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise CLIError(f"--prompt expects token ids separated by spaces or commas, given "
                       f"{text!r}")
    return [int(p) for p in parts]


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


# -- argument parsing -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}")
    return value


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown or [text]}; expected a "
                                         f"comma-separated subset of {','.join(TARGETS)}")
    return names


def _providers(text: str) -> list[str]:
    # onnxruntime would warn and silently fall back to the CPU; a typo deserves an error.
    names = [p.strip() for p in text.split(",") if p.strip()]
    available = available_providers()
    unknown = [p for p in names if p not in available]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unavailable provider(s) {unknown or [text]}; this "
                                         f"onnxruntime offers {','.join(available)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The `attngraph` argument parser with its sub-commands."""
    parser = _ArgumentParser(prog="attngraph", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"attngraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spec_help = "Python file defining the model, optionally :NAME (default: build, then model)"

    def model_options(p: argparse.ArgumentParser, *, params: bool) -> None:
        p.add_argument("model", metavar="FILE.py[:NAME]", help=spec_help)
        if params:
            p.add_argument("--params", metavar="PARAMS", help=".safetensors or .npz parameters "
                           "(default: the file's, else model.init(--seed))")
            p.add_argument("--seed", type=int, default=0, help="seed for init and feeds (0)")
            p.add_argument("--dtype", choices=FLOAT_DTYPES, default="float32")

    p = sub.add_parser("export", help="export a model to an ONNX file")
    model_options(p, params=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--target", choices=TARGETS, default="ort")
    p.add_argument("--opset", type=int, default=None, help="default: 23 (ort, onnx), 17 "
                   "(decomposed)")
    p.add_argument("--kv-cache", action="store_true", help="export a decoder with a key/value "
                   "cache (past_key_values / present inputs and outputs)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("summary", help="print the model's layer table")
    model_options(p, params=False)
    p.set_defaults(handler=cmd_summary)

    p = sub.add_parser("validate", help="compare exported targets with the numpy reference")
    model_options(p, params=True)
    p.add_argument("--targets", type=_targets, default=TARGETS, metavar=",".join(TARGETS))
    p.add_argument("--batch", type=_positive_int, default=2, help="size of batch dims (2)")
    p.add_argument("--seq", type=_positive_int, default=7, help="size of other symbolic dims (7)")
    p.add_argument("--providers", type=_providers, default=None, metavar="EP,...")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("analyze", help="attention statistics per head, and heat maps")
    model_options(p, params=True)
    p.add_argument("-o", "--output", metavar="HEATMAP.png", help="write heat maps (viz extra)")
    p.add_argument("--layer", help="layer to plot (default: the first attention layer)")
    p.add_argument("--seq", type=_positive_int, default=7, help="size of other symbolic dims (7)")
    p.set_defaults(handler=cmd_analyze)

    p = sub.add_parser("run", help="run an .onnx file with onnxruntime and time it")
    p.add_argument("onnx", metavar="OUT.onnx")
    p.add_argument("--inputs", metavar="FEEDS.npz", help="feeds (default: random)")
    p.add_argument("--batch", type=_positive_int, default=2, help="size of batch dims (2)")
    p.add_argument("--seq", type=_positive_int, default=7, help="size of other symbolic dims (7)")
    p.add_argument("--seed", type=int, default=0, help="seed for random feeds (0)")
    p.add_argument("--repeat", type=_positive_int, default=10, help="timed runs (10)")
    p.add_argument("--providers", type=_providers, default=None, metavar="EP,...",
                   help="default: CUDA when available, else CPU")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("generate", help="generate tokens from prompts with a key/value cache")
    p.add_argument("model", metavar="MODEL", help="a cached decoder .onnx (export --kv-cache), "
                   "or " + spec_help)
    p.add_argument("--prompt", action="append", required=True, metavar="IDS",
                   help="token ids, e.g. '5 17 3' (repeat for a batch; shorter prompts are "
                   "left-padded)")
    p.add_argument("-n", "--max-new-tokens", type=_positive_int, default=20)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--eos", type=int, default=None, metavar="ID", help="stop token")
    p.add_argument("--seed", type=int, default=0, help="seed for init and sampling (0)")
    p.add_argument("--params", metavar="PARAMS", help="parameters for a FILE.py model")
    p.add_argument("--target", choices=("reference", *TARGETS), default="ort",
                   help="for a FILE.py model: export target, or the numpy reference")
    p.add_argument("--providers", type=_providers, default=None, metavar="EP,...")
    p.set_defaults(handler=cmd_generate)
    return parser


def one_line(message: str) -> str:
    """Join a multi-line message (e.g. a list of parameter problems) into one line."""
    out = ""
    for line in filter(None, (part.strip() for part in message.splitlines())):
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 validation failed, 2 mistake)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except (CLIError, AttnGraphError) as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
