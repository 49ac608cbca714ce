"""Process-group and platform glue around megatron-core's parallel_state."""
