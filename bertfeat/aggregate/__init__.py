"""Reductions of SPEC §3 as pure functions over flat arrays.

token vectors [N, L, H] --layer aggregation--> [N, D_tok] --word aggregation per sentence-->
[S, D_sent] --mean per message--> [M, D_sent]: numba kernels in `kernels.py`. Group (message)
aggregation runs in DuckDB over the staged message vectors (`bertfeat/stage.py`), since it streams
over tables larger than memory.
"""
AGGREGATIONS = ("mean", "median", "max", "min", "sum", "std")
LAYER_AGGREGATIONS = AGGREGATIONS + ("concatenate",)
ABBR = {"mean": "me", "median": "md", "max": "ma", "min": "mi", "sum": "su", "std": "st",
        "concatenate": "co"}
CODES = {name: i for i, name in enumerate(LAYER_AGGREGATIONS)}
# SPEC §3's defaults (DLATK's): every layer asked for side by side, words and messages averaged
DEFAULT_LAYER_AGGREGATION, DEFAULT_WORD_AGGREGATION, DEFAULT_MSG_AGGREGATION = ("concatenate",), ("mean",), ("mean",)


