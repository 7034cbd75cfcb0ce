"""Training US-Nets, S-Nets and individual baselines: ``config`` (what a run
is), ``steps`` (the loss of each kind of model), ``progress`` (checkpoints,
logs, exact resume), ``loop`` (:func:`train`), ``memory_batches`` (small data
sets held in memory)."""
