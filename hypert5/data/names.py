"""Feature and option names that run code shares with the data layer. Unlike the rest of
the package this module needs no TensorFlow, so the model and run code can name features
on a machine that only trains or benchmarks (a JAX-only accelerator image)."""

HYPER_INPUTS = "hyper_inputs"  # hyper tasks' few-shot text feature
HYPER_INPUT_TOKENS = "hyper_input_tokens"  # decoder-only: the hyper stream's tokens
FEW_SHOT = ("hyper", "in_context", "none")  # decoder-only: where the few-shot text goes
