"""Model definitions (one decoder for Llama, Qwen2 and Mistral)."""
