"""Engine: scheduler, KV cache, model runner, sampler and the LLM API."""
