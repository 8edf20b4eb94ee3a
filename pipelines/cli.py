"""The `tokenmill` command line.

Exit codes: 0 success; 1 a step failed; 2 the config (or command line) is invalid;
3 the run finished but the accounting invariant does not hold.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.config import ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_ACCOUNTING = 0, 1, 2, 3


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, e.g. configs/laptop.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set engine.workers=4 (repeatable)")


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from pipelines.plan import resolve

    print(f"config OK: {args.config}")
    for planned in resolve(cfg):
        state = "done" if planned.done else "to run"
        print(f"  {planned.step.name:<12} {planned.version}  {state}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from pipelines.accounting import format_table
    from pipelines.runner import log, run

    summary = run(cfg, until=args.until)
    print(format_table(summary))
    if args.json:
        print(json.dumps(summary, indent=2))
    if not summary["invariant"]["holds"]:
        log("accounting invariant violated: documents were lost or doubled; see summary.json")
        return EXIT_ACCOUNTING
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Subcommands with their own argument parsers are delegated whole.
    if argv and argv[0] == "train-bpe":
        from pipelines.bpe_job import main as bpe_main

        return bpe_main(argv[1:])
    if argv and argv[0] == "inspect":
        from pipelines.inspect_cli import main as inspect_main

        return inspect_main(argv[1:])

    parser = argparse.ArgumentParser(prog="tokenmill", description="Prepare LLM pretraining data.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run every step of the plan (finished steps are skipped)")
    _config_args(p_run)
    p_run.add_argument("--until", help="stop after this step")
    p_run.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p_run.set_defaults(func=cmd_run)
    p_val = sub.add_parser("validate", help="check a config and show the plan, doing no work")
    _config_args(p_val)
    p_val.set_defaults(func=cmd_validate)
    sub.add_parser("train-bpe", help="train a BPE tokenizer on files (see tokenmill train-bpe --help)")
    sub.add_parser("inspect", help="inspect Megatron shards (see tokenmill inspect --help)")

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"tokenmill: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
