"""Scale-out executors for --add_bert and --add_sent_tokenized (Ray is imported only when asked
for; nothing below the jobs imports this).

`ray_pool.RayEmbedder` runs the same `MessageEmbedder` the local loop runs, inside Ray actors;
`ray_pool.split_on_ray` splits sentences in Ray tasks.
"""


def check_cluster(address):
    """--ray `address`: Ray not installed, or an address that answers nothing, is one line now,
    before any work (None: a local run, nothing to check)."""
    if address is not None:
        from .ray_pool import check_reachable, import_ray
        import_ray()
        check_reachable(address)
