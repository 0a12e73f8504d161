"""`model.summary()`: an Axon.Display-like table of layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._table import render

if TYPE_CHECKING:
    from ._model import Model


def summary_table(model: Model, context: int | None = None, dtype: str | None = None) -> str:
    from .cost import layer_cost

    rows = [("layer", "op", "inputs", "output", "params", "kv bytes/token")]
    total = 0
    costs = []
    for node in model.nodes:
        count = 0
        for p in node.params:
            if p.owner is not None:  # tied: counted once, at its owner
                continue
            n = 1
            for d in p.shape:
                n *= d
            count += n
        total += count
        ins = ", ".join(model.name_of(v.node) for v in node.inputs if v is not None)
        out = ", ".join(str(t) for t in node.out_types)
        cost = layer_cost(model, node, dtype)
        costs += [cost] if cost is not None else []
        per_token = f"{cost.kv_cache_bytes_per_token:,}" if cost is not None else ""
        rows.append((model.name_of(node), node.op, ins, out, f"{count:,}" if count else "",
                     per_token))
    body = [render(rows[0], rows[1:], style="grid")]
    body.append(f"Total parameters: {total:,}")
    if context is not None and costs:
        cache = sum(c.kv_cache_bytes(context) for c in costs)
        body.append(f"KV cache at context {context:,}: {cache:,} bytes per sequence "
                     f"({costs[0].dtype}, {len(costs)} attention layers)")
    return "\n".join(body)
