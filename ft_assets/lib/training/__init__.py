"""checkpoints/<recipe>: fine-tuning one recipe. The loop (loop.fit) reads top to bottom; around it the
methods (PEFT and friends), the base models and how they load, the causal-LM data (chat templates, packing,
blocks), several processes under torchrun (distributed) and step states for resume."""
