"""Models: T5, the generated-parameter pytrees, HyperT5. Never imports seqio."""
