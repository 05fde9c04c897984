"""The ``corelog`` command-line tool (composition layer over corelog, machine, replication)."""


def main() -> None:  # replaced by the real CLI in issue 5
    raise SystemExit("corelog: the CLI is not implemented yet")
