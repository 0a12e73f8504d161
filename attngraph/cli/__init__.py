"""The `attngraph` command line: export, summarise, validate, analyse, run and generate.

    attngraph export model.py:build -o model.onnx --target ort
    attngraph summary model.py
    attngraph validate model.py --targets ort,decomposed --batch 2 --seq 7
    attngraph analyze model.py -o heat.png
    attngraph run model.onnx --repeat 20
    attngraph generate decoder.onnx --prompt "5 17 3" -n 32

One module per command (`export.py`, `run.py`, ...), each with HELP, `add_arguments(parser)` and
`run(args)`; `_main.COMMANDS` lists them. Shared pieces: `_load` (the user's model file),
`_feeds` (random or .npz feeds), `_common` (errors, argument types, verbosity).

Every user mistake prints one `error: ...` line to stderr and exits with status 2; a failed
validation exits with status 1; Ctrl-C exits 130 with one line. Anything else is a bug in
attngraph and keeps its traceback.
"""

from __future__ import annotations

from ._common import CLIError
from ._load import load_model, split_spec
from ._main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "CLIError", "build_parser", "load_model", "main", "split_spec"]
