"""The `radixrouter` command: `serve`, `sim-worker`, `demo`."""

from __future__ import annotations

import sys

USAGE = """usage: radixrouter {serve,sim-worker,demo} [options]

  serve        run the router (radixrouter serve --help)
  sim-worker   run a simulated SGLang worker, for tests and benchmarks (radixrouter sim-worker --help)
  demo         start two simulated workers and the router, stream a multi-turn chat, exit
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from radixrouter.serve import main as run
    elif cmd == "sim-worker":
        from radixrouter.sim.cli import main as run
    elif cmd == "demo":
        from radixrouter.demo import main as run
    else:
        print(f"radixrouter: unknown command {cmd!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    return int(run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
