"""megatron dist_checkpointing: a model saved at TP=2 and one saved at PP=2 (tied embeddings)
load into a TP=1/PP=1 model built from another seed; the load is strict both ways (no key
missing, none unexpected), changes every parameter, and the logits equal the saved model's to
1e-6. Both checkpoints are written once per module (saving costs about 3.5 s each)."""

import functools

import pytest
import torch

from dist import run_distributed
from swax_model_testing import SEQ, VOCAB, build, gather_tp_last_dim, perturb_, tiny_config

PATTERN = "XSXG"  # PP=2: XS | XG
LAYOUTS = {"tp2": dict(tp=2, pp=1, tied=False), "pp2_tied": dict(tp=1, pp=2, tied=True)}


def _tokens():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(9))


def _save(rank, directory, tp, pp, tied):
    model = build(tiny_config(PATTERN, tp=tp, pp=pp, share_embeddings_and_output_weights=tied))
    perturb_(model)
    logits = None
    with torch.no_grad():
        if pp == 1:
            logits = gather_tp_last_dim(model(_tokens()))
        else:  # run the two stages by hand: stage 0 sends its hidden states to stage 1
            from megatron.core import parallel_state

            if parallel_state.is_pipeline_first_stage():  # global rank 0 -> rank 1
                hidden = model(_tokens())
                torch.distributed.send(hidden.contiguous(), 1)
            else:
                hidden = torch.empty(SEQ, 2, model.config.hidden_size)
                torch.distributed.recv(hidden, 0)
                model.set_input_tensor(hidden)
                logits = model(None)
    _save_from_forked_rank(model.sharded_state_dict(), directory)
    return logits


def _save_from_forked_rank(sharded_state_dict, directory):
    """dist_checkpointing.save from a test rank. Its writer forks worker processes, which
    multiprocessing refuses inside the harness's daemonic ranks, and collects their results
    through a queue from a spawn-context Manager (a fresh interpreter that re-imports torch:
    about 5 s per rank, and it would outlive the rank, which leaves with os._exit). So: lift the
    daemon flag for the call (the workers are joined before save returns) and hand the writer a
    plain in-process queue, which is enough for a synchronous save. A training process (not
    daemonic) needs neither."""
    import multiprocessing
    import queue

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    config = multiprocessing.current_process()._config
    daemon = config.get("daemon")
    config["daemon"] = False
    filesystem_async._results_queue = queue.Queue()
    try:
        dist_checkpointing.save(sharded_state_dict, directory)
    finally:
        config["daemon"] = daemon
        filesystem_async._results_queue = None


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for name, layout in LAYOUTS.items():
        directory = str(tmp_path_factory.mktemp(f"ckpt_{name}"))
        results = run_distributed(functools.partial(_save, directory=directory, **layout),
                                  layout["tp"] * layout["pp"], tp=layout["tp"], pp=layout["pp"])
        out[name] = (directory, results[-1])
    return out


def _load(rank, directories):
    from megatron.core import dist_checkpointing

    res = {}
    for name, directory in directories.items():
        model = build(tiny_config(PATTERN, init_seed=4321,
                                  share_embeddings_and_output_weights=LAYOUTS[name]["tied"]))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loaded = dist_checkpointing.load(model.sharded_state_dict(), directory, strict="raise_all")
        model.load_state_dict(loaded, strict=True)
        unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
        with torch.no_grad():
            res[name] = (model(_tokens()), unchanged, len(before))
    return res


@pytest.fixture(scope="module")
def loaded(saved):
    (res,) = run_distributed(functools.partial(_load, directories={k: v[0] for k, v in saved.items()}),
                             1, tp=1)
    return res


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checkpoint_reshards_to_tp1(saved, loaded, layout):
    saved_logits = saved[layout][1]
    logits, unchanged, n_params = loaded[layout]
    assert n_params >= 20
    assert unchanged == [], f"parameters not restored by the checkpoint: {unchanged}"
    assert saved_logits.shape == logits.shape == (2, SEQ, VOCAB)
    torch.testing.assert_close(logits, saved_logits, atol=1e-6, rtol=1e-6)
