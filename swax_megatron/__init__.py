"""swax_megatron: SWAX hybrids (sliding-window attention + mLSTM) on Megatron-core."""

__version__ = "0.1.0"
