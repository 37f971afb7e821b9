"""The encoders aa_jax runs: one module per family (``bert``, ``roberta``, ``mpnet``), the
transformer layer and classifier they share (``layers``, ``head``), the family interface
(``family``), the registry keyed by ``model_type`` (``registry``) and the generic
checkpoint loader (``loader``)."""
