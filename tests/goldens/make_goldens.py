"""Write the PyTorch goldens for ag.lstm / ag.gru: tests/goldens/lstm.npz and gru.npz.

Each file holds one seeded, batch-first, two-layer `torch.nn.LSTM` / `torch.nn.GRU` (PyTorch's
own U(-1/sqrt(H), 1/sqrt(H)) initialisation, so biases are non-zero):

    weight_ih_l{l}, weight_hh_l{l}, bias_ih_l{l}, bias_hh_l{l}   the module's state dict, f32
    x     [batch, seq, features] f32   the input
    y     [batch, seq, hidden]   f32   the output sequence of the last layer
    h_n   [num_layers, batch, hidden] f32   the final hidden state of each layer
    torch_version                str   the version that wrote the file

The outputs are computed in float64 from the stored float32 weights and input, then rounded,
so the goldens carry no float32 accumulation noise. The tests read these files with numpy
alone; only this script needs torch (`pip install 'attngraph[torch]'`).

    python tests/goldens/make_goldens.py [OUT_DIR]

The files are byte-for-byte reproducible for a given torch version (fixed zip timestamps).
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

BATCH, SEQ, FEATURES, HIDDEN, NUM_LAYERS = 2, 5, 3, 7, 2
SEEDS = {"lstm": 0, "gru": 1}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed timestamps so reruns give the same bytes."""
    tmp = path.with_suffix(".npz.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def _golden(torch: Any, kind: str) -> dict[str, np.ndarray]:
    torch.manual_seed(SEEDS[kind])
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    module = cls(FEATURES, HIDDEN, num_layers=NUM_LAYERS, batch_first=True)
    x = torch.randn(BATCH, SEQ, FEATURES)
    arrays = {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    with torch.no_grad():
        y, state = module.double()(x.double())
    h_n = state[0] if kind == "lstm" else state  # LSTM returns (h_n, c_n)
    arrays.update(
        x=x.numpy().astype(np.float32),
        y=y.numpy().astype(np.float32),
        h_n=h_n.numpy().astype(np.float32),
        torch_version=np.array(torch.__version__.split("+")[0]),
    )
    return arrays


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        import torch
    except ImportError:
        print("make_goldens.py needs PyTorch: pip install 'attngraph[torch]' (or torch) "
              "in a separate environment and run this script with it.", file=sys.stderr)
        return 1
    out_dir = Path(argv[0]) if argv else Path(__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in SEEDS:
        path = out_dir / f"{kind}.npz"
        write_npz(path, _golden(torch, kind))
        print(f"wrote {path} ({path.stat().st_size} bytes, torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
