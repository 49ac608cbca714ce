"""`swax plan`: parameters, FLOPs, memory per GPU and throughput of every TP x PP x Ulysses x DP
layout of a recipe on N GPUs (model.py: what a stage holds; layouts.py: the search;
report.py: the table and JSON). Plain Python: no torch, no megatron."""

from .layouts import Cluster, Layout, plan
from .model import Kernels, Recompute, Shape, model_parameters, stage_parameters

__all__ = ["Cluster", "Kernels", "Layout", "Recompute", "Shape", "model_parameters", "plan",
           "stage_parameters"]
