"""Scale-out executors for --add_bert (imported only when asked for; nothing below imports this).

`ray_pool.RayEmbedder` runs the same `MessageEmbedder` the local loop runs, inside Ray actors.
"""
