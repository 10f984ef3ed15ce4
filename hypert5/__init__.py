"""hypert5: HyperTuning in JAX/Flax — a T5 hypermodel that generates prefixes or LoRA
weights for a frozen T5 from a few examples of a task."""
from hypert5.models.configs import T5Config, get_config
from hypert5.models.gisting import HyperLlamaConfig
from hypert5.models.hypermodel import HyperT5, HyperT5Config
from hypert5.models.llama import Llama, LlamaConfig
from hypert5.models.peft import LoRA, Prefix
from hypert5.models.t5 import T5
from hypert5.training.llama_io import load_llama, load_peft_prefix, save_hf_llama, save_peft_prefix
from hypert5.training.model_io import CheckpointError, load_t5, save_hf_t5
from hypert5.training.peft_io import load_peft_adapter, save_peft_adapter

__all__ = [
    "CheckpointError", "HyperLlamaConfig", "HyperT5", "HyperT5Config", "Llama", "LlamaConfig",
    "LoRA", "Prefix", "T5", "T5Config", "get_config", "load_llama", "load_peft_adapter",
    "load_peft_prefix", "load_t5", "save_hf_llama", "save_hf_t5", "save_peft_adapter",
    "save_peft_prefix",
]
