"""``ratls snp report|display|verify``: produce, show and verify SEV-SNP reports.

The verbs mirror snpguest so that users need not relearn: ``verify`` takes a report and a
directory holding the chain as ``vcek``/``vlek``, ``ask``/``asvk`` and ``ark`` files in PEM or
DER, checks authenticity always and appraises only with ``--policy``.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.serialization import Encoding

from ._amd_certs import load_amd_certificate
from ._errors import EvidenceFormatError
from ._files import write_atomically
from ._policy import load_policy
from ._snp_report import ProductLine, parse_snp_report
from ._snp_verify import SnpEndorsements
from ._verify import verify_snp_attestation
from .cli import EXIT_OK, CliError, print_json

if TYPE_CHECKING:
    import argparse

    from cryptography import x509

    from ._result import AttestationResult
    from ._snp_report import SnpReport

__all__ = ["default_sim_dir", "display", "load_endorsements_dir", "report", "verify"]

_CERT_SUFFIXES: Final = (".pem", ".der", ".crt", ".cer")


def default_sim_dir() -> Path:
    """Where the simulated AMD-SP keeps its keys: $RATLS_SIM_DIR or ~/.cache/ratls/sim."""
    configured = os.environ.get("RATLS_SIM_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ratls" / "sim"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc


def _find_cert(directory: Path, names: tuple[str, ...]) -> Path | None:
    found = [
        directory / f"{name}{suffix}"
        for name in names
        for suffix in _CERT_SUFFIXES
        if (directory / f"{name}{suffix}").is_file()
    ]
    if len(found) > 1:
        listed = ", ".join(p.name for p in found)
        raise CliError(f"{directory} holds more than one of {'/'.join(names)}: {listed}")
    return found[0] if found else None


def load_endorsements_dir(directory: Path) -> SnpEndorsements:
    """Read a chain directory: vcek|vlek, ask|asvk, ark, each .pem/.der/.crt/.cer.

    Raises:
        CliError: the directory is missing or holds no usable chain.
        EvidenceFormatError: a certificate file is malformed.
    """
    if not directory.is_dir():
        raise CliError(f"certificate directory {directory} does not exist")
    leaf = _find_cert(directory, ("vcek", "vlek"))
    intermediate = _find_cert(directory, ("ask", "asvk"))
    root = _find_cert(directory, ("ark",))
    missing = [
        name
        for name, path in (("vcek or vlek", leaf), ("ask or asvk", intermediate), ("ark", root))
        if path is None
    ]
    if missing or leaf is None or intermediate is None or root is None:
        raise CliError(f"{directory} lacks {', '.join(missing)} (.pem or .der)")
    return SnpEndorsements(
        leaf=_load_cert(leaf),
        intermediate=_load_cert(intermediate),
        root=_load_cert(root),
    )


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return load_amd_certificate(_read(path, "certificate"))
    except EvidenceFormatError as exc:
        raise EvidenceFormatError(f"{path.name}: {exc}") from exc


def _product(name: str | None) -> ProductLine | None:
    return ProductLine(name) if name is not None else None


def report(args: argparse.Namespace) -> int:
    """``ratls snp report``: write a report and its chain."""
    report_data = args.report_data if args.report_data is not None else bytes(64)
    if len(report_data) > 64:
        raise CliError(f"--report-data takes at most 64 bytes, got {len(report_data)}")
    report_data = report_data.ljust(64, b"\0")
    if not args.sim:
        return _report_from_hardware(args, report_data)

    from ._amd_certs import KeyKind
    from .sim import SimulatedAmdSp

    key_kind = KeyKind.VLEK if args.vlek else KeyKind.VCEK
    product = ProductLine(args.product)
    state = (args.sim_dir or default_sim_dir()) / f"{product.value.lower()}-{key_kind.name.lower()}"
    try:
        sim = SimulatedAmdSp.load_or_generate(state, product, key_kind=key_kind)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot use the simulator state in {state}: {exc}") from exc
    built = sim.build_report(report_data=report_data, version=args.version, vmpl=args.vmpl)
    _write(args.out, built.to_bytes())
    leaf_name = "vlek.der" if args.vlek else "vcek.der"
    mid_name = "asvk.pem" if args.vlek else "ask.pem"
    _write(args.certs_dir / leaf_name, sim.leaf.public_bytes(Encoding.DER))
    _write(args.certs_dir / mid_name, sim.ask.public_bytes(Encoding.PEM))
    _write(args.certs_dir / "ark.pem", sim.ark.public_bytes(Encoding.PEM))
    print(
        f"wrote {args.out} (simulated {args.product}, version {args.version}, "
        f"VMPL {args.vmpl}) and {leaf_name}, {mid_name}, ark.pem in {args.certs_dir}"
    )
    return EXIT_OK


def _report_from_hardware(args: argparse.Namespace, report_data: bytes) -> int:
    from ._snp_certtable import (
        CERT_TABLE_GUID_ARK,
        CERT_TABLE_GUID_ASK,
        CERT_TABLE_GUID_VCEK,
        CERT_TABLE_GUID_VLEK,
        parse_cert_table,
    )
    from .attesters import SnpGuestAttester

    guest = SnpGuestAttester().get_report(report_data, vmpl=args.vmpl)
    _write(args.out, guest.report)
    written = []
    if guest.certs:
        table = parse_cert_table(guest.certs)
        for guid, name in (
            (CERT_TABLE_GUID_VCEK, "vcek.der"),
            (CERT_TABLE_GUID_VLEK, "vlek.der"),
            (CERT_TABLE_GUID_ASK, "ask.der"),
            (CERT_TABLE_GUID_ARK, "ark.der"),
        ):
            blob = table.get(guid)
            if blob is not None:
                _write(args.certs_dir / name, blob)
                written.append(name)
    print(f"wrote {args.out} ({guest.provider})")
    if written:
        print(f"wrote {', '.join(written)} in {args.certs_dir}")
    else:
        parsed = parse_snp_report(guest.report)
        print("the host supplied no certificates; fetch them from AMD's KDS:", file=sys.stderr)
        for hint in _kds_hints(parsed):
            print(f"  {hint}", file=sys.stderr)
    return EXIT_OK


def _kds_hints(parsed: SnpReport) -> list[str]:
    from ._amd_certs import kds_chain_url, kds_vcek_url

    if parsed.product is None:
        return ["(report version 2: give --product to compute the KDS addresses)"]
    hints = [f"chain: {kds_chain_url(parsed.product)}"]
    try:
        hints.insert(0, f"VCEK (DER): {kds_vcek_url(parsed)}")
    except ValueError as exc:
        hints.insert(0, f"VCEK: {exc}")
    return hints


def display(args: argparse.Namespace) -> int:
    """``ratls snp display``: show every field of a report."""
    parsed = parse_snp_report(_read(args.report, "report"), product=_product(args.product))
    described = parsed.describe()
    if args.json:
        print_json(described)
    else:
        _print_table(described)
        print()
        print("where to fetch the signing chain if the host gave none (AMD KDS):")
        for hint in _kds_hints(parsed):
            print(f"  {hint}")
    return EXIT_OK


def _print_table(described: dict[str, object], indent: str = "") -> None:
    for key, value in described.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_table(value, indent + "  ")
        else:
            print(f"{indent}{key:<22} {value}")


def verify(args: argparse.Namespace) -> int:
    """``ratls snp verify``: authenticity always; appraisal with --policy."""
    raw = _read(args.report, "report")
    endorsements = load_endorsements_dir(args.certs)
    policy = load_policy(args.policy) if args.policy is not None else None
    at = args.at or datetime.now(UTC)
    result = verify_snp_attestation(
        raw,
        endorsements,
        policy=policy,
        at=at,
        expected_report_data=args.report_data.ljust(64, b"\0") if args.report_data else None,
        product=_product(args.product),
        trust_simulator=args.trust_simulator,
    )
    if args.json:
        print_json(result.claims())
    else:
        print_result(result)
    return EXIT_OK


def print_result(result: AttestationResult) -> None:
    """Human-readable verification outcome."""
    snp = result.snp.report
    what = "verified and appraised" if result.appraised else "verified (authenticity only)"
    print(f"PASS: SEV-SNP report {what}")
    print(f"  trust anchor   {result.trust_anchor}")
    print(f"  product        {result.snp.product.value} (report version {snp.version})")
    print(f"  signing key    {result.snp.key_kind.name}")
    print(f"  vmpl           {snp.vmpl}")
    print(f"  measurement    {snp.measurement.hex()}")
    print(f"  reported tcb   {snp.reported_tcb}")
    print(f"  debug          {snp.policy.debug}")
    print(f"  report data    {snp.report_data.hex()}")
    if result.policy_digest:
        print(f"  policy         sha256:{result.policy_digest}")
