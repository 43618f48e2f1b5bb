"""``hostkit COMMAND``: the host's CLI (also ``python -m hostkit``)."""
import sys
from functools import partial

from hostkit import agent, check, commands, register

COMMANDS = {"check": check.main, "register": register.main, "agent": agent.main,
            **{name: partial(commands.main, name) for name in commands.COMMANDS}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: hostkit {{{','.join(COMMANDS)}}} [options]  (hostkit COMMAND --help for more)",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
