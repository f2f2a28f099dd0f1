"""The thin LoRA trainer and student evaluation (consumes exported datasets only; arrives with issue 5)."""
