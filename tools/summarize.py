#!/usr/bin/env python
"""The ablation report of a set of runs: tables and plots as markdown and as one self-contained
HTML page (swax_megatron.eval.report).

    python tools/summarize.py recipes/tiny/window_sweep.yaml --out reports/window_sweep
    python tools/summarize.py runs/tiny-swax-* runs/tiny-transformer-* --out reports/tiny

Inputs: run directories, or sweep recipes (each entry's run directory). Writes DIR/report.md,
DIR/report.html and DIR/figures/*.png. Runs not there yet, or without evaluation results, are
listed in the report; a path that does not exist or is not a run directory is an error (exit 2).
"""

import argparse
import os
import sys
import warnings

# megatron-core warns at import about optional GPU extensions; irrelevant for a report.
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed")
warnings.filterwarnings("ignore", message=".*Apex is not installed")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=os.path.basename(__file__),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_SWEEP",
                        help="run directories and/or sweep recipe files")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="writes DIR/report.md, DIR/report.html, DIR/figures/")
    parser.add_argument("--title", help="report title (default: the sweep's or runs' name)")
    args = parser.parse_args(argv)

    from swax_megatron.eval.report import ReportInputError, write_report

    try:
        out = write_report(args.inputs, args.out, title=args.title)
    except ReportInputError as e:
        print(f"summarize: error: {e}", file=sys.stderr)
        return 2
    present = sum(r.exists for r in out.runs)
    print(f"{out.markdown}\n{out.html}\n{len(out.figures)} figures, {present} of "
          f"{len(out.runs)} runs")
    for line in out.missing:
        print(f"  not evaluated: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
