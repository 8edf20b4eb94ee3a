"""The `tokenmill` command line.

Exit codes: 0 success; 1 a step failed; 2 the config, the plan or the command line is
invalid (nothing was run); 3 the run finished but the accounting invariant does not hold;
4 another runner holds the step's lease (nothing was run).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from pipelines.config import ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_ACCOUNTING, EXIT_LEASE = 0, 1, 2, 3, 4


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, e.g. configs/laptop.yaml")
    _set_arg(p)


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set engine.workers=4 (repeatable)")


def _print_states(plan, out=sys.stdout) -> None:
    from pipelines.plan import step_states

    print(f"plan {plan.hash}: {len(plan.inputs)} input files, run root {plan.run_root}", file=out)
    for name, state, why in step_states(plan):
        print(f"  {name:<13} {plan.step(name).version}  {state:<7} {why}", file=out)


def cmd_validate(args: argparse.Namespace) -> int:
    from pipelines.plan import check_config, make_plan

    cfg = load_config(args.config, args.overrides)
    if args.no_inputs:
        steps = check_config(cfg)
        print(f"config OK: {args.config} (inputs and the files steps depend on were not looked at)")
        for s in steps:
            print(f"  {s.name:<13} reads {', '.join(s.inputs) or 'the input files'}")
        return EXIT_OK
    plan = make_plan(cfg)
    print(f"config OK: {args.config}")
    _print_states(plan)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from pipelines.plan import make_plan, write_plan

    plan = make_plan(load_config(args.config, args.overrides))
    url = write_plan(plan)
    _print_states(plan, out=sys.stderr)
    print(url)
    return EXIT_OK


def _shown(url: str) -> str:
    """A local path as the user would type it (relative to here when below here)."""
    import os

    if "://" in url:
        return url
    rel = os.path.relpath(url)
    return url if rel.startswith("..") else rel


def _report(plan) -> int:
    from pipelines.steps.accounting import SUMMARY, format_table
    from stages import storage

    summary_url = storage.join(plan.step_url("accounting"), SUMMARY)
    if storage.exists(summary_url):
        print(format_table(storage.read_json(summary_url), _shown(plan.run_root)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.plan import make_plan, write_plan
    from pipelines.runner import log, run_plan

    plan = make_plan(load_config(args.config, args.overrides))
    log(f"plan {write_plan(plan)}")
    run_plan(plan, until=args.until, wait_for_lease=args.wait_for_lease or None)
    if not args.until or args.until == "accounting":
        _report(plan)
        if args.json:
            from pipelines.steps.accounting import SUMMARY
            from stages import storage

            print(json.dumps(storage.read_json(storage.join(plan.step_url("accounting"), SUMMARY)), indent=2))
    return EXIT_OK


def cmd_run_step(args: argparse.Namespace) -> int:
    from pipelines.engines import make_engine
    from pipelines.plan import load_plan
    from pipelines.runner import run_step

    plan = load_plan(args.plan, args.overrides)
    plan.step(args.step)  # an unknown step fails here, before an engine starts
    with make_engine(plan.cfg, plan.cfg.progress) as engine:
        run_step(plan, args.step, engine, wait_for_lease=args.wait_for_lease or None)
    if args.step == "accounting":
        _report(plan)
    return EXIT_OK


def cmd_submit_step(args: argparse.Namespace) -> int:
    from pipelines.plan import load_plan
    from pipelines.ray_jobs import submission_id, submit_step

    plan = load_plan(args.plan)
    plan.step(args.step)
    rj = plan.cfg.airflow.ray_job
    address = args.address or rj.address
    if not address:
        raise ConfigError("submit-step needs the Ray job API address: --address http://HEAD:8265, or airflow.ray_job.address")
    job_id = args.submission_id or submission_id("tokenmill", plan.hash, args.step)
    return submit_step(plan.url, args.step, address, job_id, runtime_env=rj.runtime_env,
                       entrypoint_num_cpus=rj.entrypoint_num_cpus, poll_seconds=args.poll or rj.poll_seconds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Subcommands with their own argument parsers are delegated whole.
    if argv and argv[0] == "train-bpe":
        from pipelines.bpe_cli import main as bpe_main

        return bpe_main(argv[1:])
    if argv and argv[0] == "inspect":
        from pipelines.inspect_cli import main as inspect_main

        return inspect_main(argv[1:])

    parser = argparse.ArgumentParser(prog="tokenmill", description="Prepare LLM pretraining data.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="plan, then run every step of the plan in order (finished steps are skipped)")
    _config_args(p_run)
    p_run.add_argument("--until", help="stop after this step")
    p_run.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p_run.add_argument("--wait-for-lease", action="store_true",
                       help="when another runner holds a step's lease, wait for it instead of exiting (4)")
    p_run.set_defaults(func=cmd_run)
    p_plan = sub.add_parser("plan", help="pin the inputs and versions of a run: writes <run_root>/_plans/<hash>.json, "
                                         "prints its path")
    _config_args(p_plan)
    p_plan.set_defaults(func=cmd_plan)
    p_step = sub.add_parser("run-step", help="run one step of a pinned plan (its inputs must be finished)")
    p_step.add_argument("plan", help="a plan file written by `tokenmill plan`")
    p_step.add_argument("step", help="the step to run, e.g. read")
    p_step.add_argument("--wait-for-lease", action="store_true",
                        help="when another runner holds the step's lease, wait for it instead of exiting (4)")
    _set_arg(p_step)
    p_step.set_defaults(func=cmd_run_step)
    p_sub = sub.add_parser("submit-step", help="run one step of a pinned plan as a Ray job (re-attaches to a job of the "
                                               "same submission id that is still running); exits with the job's code")
    p_sub.add_argument("plan", help="a plan file on storage the cluster reaches")
    p_sub.add_argument("step")
    p_sub.add_argument("--address", help="the cluster's job API (default airflow.ray_job.address), e.g. http://HEAD:8265")
    p_sub.add_argument("--submission-id", help="deterministic job id (default: from the plan and the step)")
    p_sub.add_argument("--poll", type=float, default=None, help="seconds between status checks")
    p_sub.set_defaults(func=cmd_submit_step)
    p_val = sub.add_parser("validate", help="check a config and show the plan and each step's state, doing no work")
    _config_args(p_val)
    p_val.add_argument("--no-inputs", action="store_true",
                       help="check config, steps and engine only, without listing the inputs (for cluster profiles "
                            "whose data this machine cannot reach)")
    p_val.set_defaults(func=cmd_validate)
    sub.add_parser("train-bpe", help="train a BPE tokenizer on files (see tokenmill train-bpe --help)")
    sub.add_parser("inspect", help="inspect Megatron shards (see tokenmill inspect --help)")

    args = parser.parse_args(argv)
    from pipelines.lease import LeaseHeld, LeaseLost
    from pipelines.steps.accounting import AccountingError

    try:
        return args.func(args)
    except (LeaseHeld, LeaseLost) as e:
        print(f"tokenmill: {e}", file=sys.stderr)
        return EXIT_LEASE
    except ConfigError as e:
        print(f"tokenmill: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except AccountingError as e:
        print(f"tokenmill: {e}", file=sys.stderr)
        return EXIT_ACCOUNTING
    except Exception as e:  # a step failed: its own exception, with the task named in its notes
        traceback.print_exc()
        print(f"tokenmill: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
