"""openfedllm: federated fine-tuning of large language models (LoRA SFT), simulated or deployed."""

__version__ = "0.1.0"
