"""Training: from a config to trained, selected and saved models.

`plan` resolves a config once (method, loss terms, population, traced hyperparameters);
`program` builds from the plan what training runs: the networks, the initial state, the one
jitted, donated `step` and the data-parallel device `loop`; `trainer` holds the run's control
flow, with `selection` (validation-based model selection and early stopping), `checkpoints`,
`workdir` (its files, lock and resume rules), `runlog` (history, TensorBoard, metrics.json),
`evaluation` (embedding and scoring a split), `input_pipeline` (the input transform and batch
order) and `program_cache` (traced programs kept on disk).
"""
