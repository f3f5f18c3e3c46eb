"""Scale-out executors for --add_bert and --add_sent_tokenized (imported only when asked for;
nothing below imports this).

`ray_pool.RayEmbedder` runs the same `MessageEmbedder` the local loop runs, inside Ray actors;
`ray_pool.split_on_ray` splits sentences in Ray tasks.
"""
