"""`finfed deploy ...`: a consortium across real sites, step by step (docs/deployment.md).

Each step runs Flower's own tools; ``--dry-run`` prints them instead.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def add_deploy_parser(commands) -> None:
    deploy = commands.add_parser("deploy", help="run across real sites: TLS, registered sites, one SuperNode "
                                 "per bank (docs/deployment.md)")
    steps = deploy.add_subparsers(dest="deploy_command", required=True)

    init = steps.add_parser("init", help="create a consortium folder: CA, coordinator certificate, "
                            "a key pair and site.toml per site")
    init.add_argument("folder", type=Path)
    init.add_argument("--coordinator-host", dest="hosts", action="append", required=True, metavar="HOST",
                      help="name or IP the sites use to reach the coordinator (repeatable; all go in its "
                           "TLS certificate)")
    init.add_argument("--sites", required=True, help="comma-separated site names, e.g. bank-a,bank-b,bank-c")
    init.add_argument("--port", type=int, default=9092, help="the SuperLink's port (default 9092)")
    init.add_argument("--bind", default="0.0.0.0",
                      help="interface the SuperLink listens on (default 0.0.0.0: every interface)")

    add_site = steps.add_parser("add-site", help="add a site (folder and key pair) to a consortium")
    add_site.add_argument("folder", type=Path)
    add_site.add_argument("name")

    coordinator = steps.add_parser("coordinator", help="start the SuperLink (TLS, SuperNode authentication) "
                                   "and register every site's public key")
    coordinator.add_argument("folder", type=Path)
    coordinator.add_argument("--dry-run", action="store_true", help="print the Flower commands, run nothing")

    register = steps.add_parser("register", help="register sites' public keys with the running coordinator")
    register.add_argument("folder", type=Path)

    sites = steps.add_parser("sites", help="list the consortium's sites with their SuperNode ids and states "
                             "(`flwr supernode ls` with bank names)")
    sites.add_argument("folder", type=Path)

    site = steps.add_parser("site", help="check a site's site.toml, then start its SuperNode")
    site.add_argument("site_dir", type=Path, help="the site's folder (or its site.toml)")
    site.add_argument("--dry-run", action="store_true", help="check and print the Flower command, run nothing")
    site.add_argument("--max-retries", type=int, help="give up after this many failed connection attempts "
                      "(default: keep trying, e.g. while the coordinator restarts)")

    run = steps.add_parser("run", help="launch a run on the coordinator and wait for its results")
    run.add_argument("folder", type=Path)
    run.add_argument("--config", type=Path, help="experiment YAML (default: built-in defaults)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting (repeatable)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run (same --config and "
                     "--set) from its last completed round, e.g. after the coordinator restarted")
    run.add_argument("--dry-run", action="store_true", help="check the config, print the Flower command")


def deploy(args: argparse.Namespace) -> int:
    handlers = {"init": _init, "add-site": _add_site, "coordinator": _coordinator, "register": _register,
                "sites": _sites, "site": _site, "run": _run}
    return handlers[args.deploy_command](args)


def _init(args: argparse.Namespace) -> int:
    from finfed.deploy.consortium import init_consortium

    consortium = init_consortium(args.folder, hosts=args.hosts, sites=args.sites.split(","), port=args.port,
                                 bind=args.bind)
    print(f"Consortium created in {consortium.folder}: coordinator at {consortium.address}, "
          f"{len(consortium.sites)} site(s).")
    print(f"  coordinator: {consortium.coordinator_dir} (keep it, with ca/, on the coordinator's machine; "
          "move ca/ca.key offline)")
    for site in consortium.sites:
        print(f"  {site.name}: hand {consortium.site_dir(site.name)} to the bank over a secure channel; it fills "
              "in [data] path and [privacy] budget_epsilon in site.toml")
    return 0


def _add_site(args: argparse.Namespace) -> int:
    from finfed.deploy.consortium import add_site, load_consortium

    consortium = load_consortium(args.folder)
    site = add_site(consortium, args.name)
    print(f"Site {site.name} (id {site.site_id}) created in {consortium.site_dir(site.name)}; register it with "
          f"`finfed deploy register {args.folder}` while the coordinator runs")
    return 0


def _coordinator(args: argparse.Namespace) -> int:
    from finfed.deploy.commands import DEPLOY_ENV, flower_config
    from finfed.deploy.consortium import check_coordinator_files, load_consortium
    from finfed.deploy.launch import coordinator_plan, plan_summary, serve_coordinator

    consortium = load_consortium(args.folder)
    if args.dry_run:
        check_coordinator_files(consortium)
        print(f"# $FLWR_HOME={consortium.flwr_home}; its config.toml:\n" +
              "\n".join(f"#   {line}" for line in flower_config(consortium).splitlines()))
        print(plan_summary(coordinator_plan(consortium), {**DEPLOY_ENV, "FLWR_HOME": str(consortium.flwr_home)}))
        return 0
    return serve_coordinator(consortium)


def _register(args: argparse.Namespace) -> int:
    from finfed.deploy.consortium import load_consortium
    from finfed.deploy.launch import register_sites, write_flower_config

    consortium = load_consortium(args.folder)
    register_sites(consortium, write_flower_config(consortium))
    return 0


def _sites(args: argparse.Namespace) -> int:
    from finfed.deploy.consortium import load_consortium
    from finfed.deploy.launch import (
        registered_nodes,
        require_coordinator,
        write_flower_config,
    )
    from finfed.deploy.nodes import format_rows, site_rows

    consortium = load_consortium(args.folder)
    require_coordinator(consortium)
    print(format_rows(site_rows(consortium, registered_nodes(write_flower_config(consortium)))))
    return 0


def _site(args: argparse.Namespace) -> int:
    from finfed.deploy.commands import DEPLOY_ENV, supernode_command
    from finfed.deploy.launch import (
        check_coordinator_tls,
        check_runtime_port,
        plan_summary,
        serve_site,
    )
    from finfed.deploy.site_config import load_site_config

    site = load_site_config(args.site_dir)
    if args.dry_run:
        check_runtime_port(site)
        reachable = check_coordinator_tls(site)
        print(f"# {site.file}: OK; coordinator {site.superlink} "
              f"{'answered over TLS, certificate trusted' if reachable else 'not reachable now'}")
        print(plan_summary([supernode_command(site, args.max_retries)],
                           {**DEPLOY_ENV, "FLWR_HOME": str(site.flwr_home)}))
        return 0
    return serve_site(site, max_retries=args.max_retries)


def _run(args: argparse.Namespace) -> int:
    from finfed.cli.run_console import finish_run, show_engine_line, submit_stoppable
    from finfed.compat import log_shows_started_run
    from finfed.deploy.commands import DEPLOY_ENV, run_command
    from finfed.deploy.consortium import load_consortium
    from finfed.deploy.launch import (
        deployment_config,
        plan_summary,
        require_coordinator,
        start_run,
    )
    from finfed.deploy.runlock import RunLock
    from finfed.errors import RunError
    from finfed.runs.outputs import prepare_run_dir
    from finfed.runtime.flower_app import APP_FOLDER
    from finfed.runtime.local_engine import RunNotStarted

    consortium = load_consortium(args.folder)
    config = deployment_config(consortium, args.config, args.overrides, resume=args.resume)
    run_dir = config.resolved_run_dir
    if args.dry_run:
        run_config = consortium.flwr_home / f"run-config-{config.name}.toml"
        print(f"# run directory {run_dir}; settings written to {run_config}")
        print(plan_summary([run_command(consortium.flwr_home / APP_FOLDER, run_config)],
                           {**DEPLOY_ENV, "FLWR_HOME": str(consortium.flwr_home)}))
        return 0
    require_coordinator(consortium)  # before anything is written: a run folder would block the name
    # One run at a time: two would both spend the sites' budgets. Held until this process exits.
    RunLock(consortium.coordinator_dir, config.name).acquire()
    fresh = not args.resume and not run_dir.exists()
    if not args.resume:  # a resumed run continues in its own directory
        prepare_run_dir(run_dir, overwrite=args.overwrite)
    started = time.time()
    logger.info(f"run {config.name} on {consortium.address}: {config.federation.num_sites} site(s), "
                f"{config.federation.rounds} round(s); results in {run_dir}")
    # SIGINT/SIGTERM: RUN/.stop on this (the coordinator's) disk; its ServerApp stops after the round in
    # progress (deployed sites cannot see the file: each finishes the round it is training).
    try:
        result = submit_stoppable(run_dir, lambda: start_run(consortium, config, on_line=show_engine_line))
    except (RuntimeError, OSError) as exc:
        log = run_dir / "flower.log"
        if log.is_file() and log_shows_started_run(log.read_text(encoding="utf-8", errors="replace")):
            raise
        tail = unstarted_run_log(run_dir, fresh)
        reason = "" if isinstance(exc, RunNotStarted) else str(exc)  # its reason is the log's tail, shown
        raise RunError(f"the run was not started: {tail}{reason}") from None
    hint = shlex.join(["finfed", "deploy", "run", str(args.folder), "--resume",
                       *(["--config", str(args.config)] if args.config else []),
                       *(arg for item in args.overrides for arg in ("--set", item))])
    return finish_run(run_dir, result, started, resume_hint=hint)


def unstarted_run_log(run_dir: Path, fresh: bool) -> str:
    """Flower's last words; a folder this command created for a run that never started is removed,
    so the name stays free."""
    log = run_dir / "flower.log"
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.is_file() else []
    if fresh and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {"flower.log"}:
        shutil.rmtree(run_dir)
    return "".join(f"\n  {line}" for line in tail) + ("\n" if tail else "")
