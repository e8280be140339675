"""The ``ratls`` command line.

Verbs follow the tools users already know: ``ratls snp report|display|verify`` mirror
snpguest.  Exit codes are the same everywhere:

* 0: everything that was asked passed;
* 1: evidence was read but failed a check (the line printed names the claim, the expected
  value and the actual one);
* 2: the input could not be used at all (missing file, malformed report, invalid policy,
  bad arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NoReturn

from ._errors import EvidenceVerificationError, RatlsError

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_VERIFICATION_FAILED: Final = 1
EXIT_BAD_INPUT: Final = 2

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A problem with the command's input, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


#: The sub-command action that the ``add_commands`` functions of the CLI modules extend.
Verbs = argparse._SubParsersAction


def _product_arg(value: str) -> str:
    names = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}
    try:
        return names[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown product {value!r}; choose milan, genoa or turin"
        ) from None


def _hex_arg(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex string: {value!r}") from None


def _time_arg(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    from . import _cli_snp

    parser = _Parser(prog="ratls", description="Attested TLS for AMD SEV-SNP confidential VMs.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    demo = verbs.add_parser("demo", help="run the end-to-end demo on the simulator")
    demo.add_argument("--product", type=_product_arg, default="Genoa")
    demo.set_defaults(handler=_run_demo)

    snp = verbs.add_parser("snp", help="SEV-SNP attestation reports")
    snp_verbs = snp.add_subparsers(dest="snp_verb", required=True, parser_class=_Parser)

    report = snp_verbs.add_parser("report", help="produce an attestation report and its chain")
    report.add_argument("--sim", action="store_true", help="use the simulated AMD-SP")
    report.add_argument("--product", type=_product_arg, default="Genoa")
    report.add_argument("--version", type=int, choices=(2, 3, 5), default=3)
    report.add_argument("--report-data", type=_hex_arg, default=None, metavar="HEX")
    report.add_argument("--vmpl", type=int, choices=(0, 1, 2, 3), default=0)
    report.add_argument("--vlek", action="store_true", help="sign with a VLEK (simulator only)")
    report.add_argument(
        "--sim-dir", type=Path, default=None, help="where the simulator keeps its identity"
    )
    report.add_argument("--out", type=Path, required=True, help="report output file")
    report.add_argument("--certs-dir", type=Path, required=True, help="chain output directory")
    report.set_defaults(handler=_cli_snp.report)

    display = snp_verbs.add_parser("display", help="show a report's fields")
    display.add_argument("report", type=Path)
    display.add_argument("--product", type=_product_arg, default=None)
    display.add_argument("--json", action="store_true")
    display.set_defaults(handler=_cli_snp.display)

    verify = snp_verbs.add_parser("verify", help="verify (and with --policy appraise) a report")
    verify.add_argument("--report", type=Path, required=True)
    verify.add_argument(
        "--certs", type=Path, required=True, help="directory with vcek|vlek, ask|asvk, ark"
    )
    verify.add_argument("--policy", type=Path, default=None)
    verify.add_argument("--product", type=_product_arg, default=None)
    verify.add_argument("--at", type=_time_arg, default=None, metavar="ISO8601")
    verify.add_argument("--report-data", type=_hex_arg, default=None, metavar="HEX")
    verify.add_argument(
        "--trust-simulator",
        action="store_true",
        help="accept the simulated AMD root (proves nothing about hardware)",
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_cli_snp.verify)

    from . import _cli_cert, _cli_net, _cli_spdm, _cli_tpm

    _cli_cert.add_commands(verbs)
    _cli_tpm.add_commands(verbs)
    _cli_spdm.add_commands(verbs)
    _cli_net.add_commands(verbs)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(product_name=args.product)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ratls`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    handler: Handler = args.handler
    try:
        return handler(args)
    except EvidenceVerificationError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return EXIT_VERIFICATION_FAILED
    except (RatlsError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def print_json(value: object) -> None:
    """Print a JSON document with stable key order."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":  # pragma: no cover
    # Run the canonical module, not this __main__ copy: the CLI modules import ratls.cli, and
    # their exceptions must be the classes main() catches.
    from ratls.cli import main as _canonical_main

    sys.exit(_canonical_main())
