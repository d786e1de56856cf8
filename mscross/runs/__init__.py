"""What training writes and inference reads: the pieces of a trained run that both need, below
both, so that using a model imports none of the training machinery.

`layout` (the workdir's files), `lock` (one writer per workdir), `checkpoints` (Orbax saves, the
best generator's restore), `inputs` (the data a config names, loaded once, and the input
transform), `embedding` (what is ranked, in batches) and `settings` (how a run is scored and
what it ranks).
"""
