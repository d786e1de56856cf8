"""Training: from a config to trained, selected and saved models.

`plan` resolves a config once into the run plan (method, loss terms with their functions,
population, traced hyperparameters, typed static settings); below the trainer the plan is the
only input. `program` builds from the plan what training runs: the networks, the initial state,
the one jitted, donated `step` and the data-parallel device `loop` (fed by `batches`);
`trainer` is the run's spine, over the immutable run state and plain functions of `run`, with
`selection` (validation-based model selection and early stopping), `resume` (a workdir's resume
rules), `runlog` (history, TensorBoard, metrics.json), `evaluation` (the discriminator's
accuracy) and `program_cache` (traced programs kept on disk). What inference shares with
training (the workdir's layout and lock, checkpoints, the input transform, embedding) is in
`mscross.runs`.
"""
