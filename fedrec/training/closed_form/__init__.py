"""The closed-form local trainer: many users' DP-SGD rounds of MF at once
(:func:`fedrec.training.closed_form.engine.train_cohort`)."""
