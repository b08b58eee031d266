"""`elemental-system-agent [sentinel] [--once]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elemental_common.errors import entry_point
from elemental_common.log import setup_logging
from elemental_register.agent.agent import Agent, wait_for_config, wait_for_connection
from elemental_register.agent.client import OperatorClient
from elemental_register.agent.config import AgentConfig
from elemental_register.agent.k8s import KubeConnection, SecretClient


@entry_point("elemental-system-agent")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="elemental-system-agent", description="Apply the operator's plans to this machine"
    )
    ap.add_argument(
        "mode",
        nargs="?",
        default="sentinel",
        choices=["sentinel"],
        help="run as a service (rancher-system-agent's verb, accepted for compatibility)",
    )
    ap.add_argument(
        "--config",
        help="agent config (default $CATTLE_AGENT_CONFIG or /etc/rancher/elemental/agent/config.yaml)",
    )
    ap.add_argument("--once", action="store_true", help="one poll/apply/report, then exit")
    ap.add_argument("-d", "--debug", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.debug)
    cfg_path = Path(args.config) if args.config else None
    wait_for_config(cfg_path)
    cfg = AgentConfig.load(cfg_path)
    conn = wait_for_connection(cfg)
    client: OperatorClient | SecretClient
    if isinstance(conn, KubeConnection):
        client = SecretClient(conn, strict=cfg.strict_verify)
    else:
        client = OperatorClient(conn, strict=cfg.strict_verify)
    agent = Agent(cfg, client)
    if args.once:
        agent.step()
        return 0 if not agent.state.failed_checksum else 1
    agent.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
