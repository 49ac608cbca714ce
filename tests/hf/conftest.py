"""tests/hf need transformers (the `hf` extra). Without it the folder is skipped with this reason, shown
in the summary (-ra), rather than failing the whole run's collection."""

import pytest

pytest.importorskip("transformers", reason="tests/hf need the hf extra: pip install -c constraints/cpu.txt -e '.[hf]'")
