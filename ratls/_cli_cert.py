"""``ratls cert create|inspect|verify``: attested certificates (interoperable RA-TLS).

* ``create`` makes a key (or uses an existing one) and a self-signed certificate carrying
  SEV-SNP evidence for it, from the simulator (``--sim``) or from this machine's SNP guest
  interface.
* ``inspect`` shows what a certificate of the family carries (ours, rats-tls, Gramine,
  Intel SGX SDK, ...) and checks the tie between its key and its evidence.  It exits 1
  when that binding is broken, even for evidence it cannot verify here (an SGX quote).
* ``verify`` also verifies and appraises SNP evidence and exits 0 only when every check
  passes.

Exit codes are those of :mod:`ratls.cli`: 0 pass, 1 a check failed, 2 unusable input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ._cli_snp import default_sim_dir, print_result
from ._errors import EvidenceFormatError
from ._evidence_cert import (
    AttestedCertificateBuilder,
    BindingStatus,
    CertificateEvidence,
    EvidenceType,
    inspect_evidence_certificate,
    load_evidence_certificate,
    verify_evidence_certificate,
)
from ._files import write_atomically
from ._policy import load_policy
from ._snp_report import ProductLine, parse_snp_report
from ._snp_verify import SnpEndorsements
from .cli import EXIT_OK, CliError, _hex_arg, _product_arg, _time_arg, print_json

if TYPE_CHECKING:
    import argparse

    from cryptography import x509

    from .cli import Verbs, _Parser
    from .sim import SimulatedAmdSp

__all__ = ["add_commands", "create", "inspect", "verify"]

_KEY_TYPES = ("p256", "p384", "ed25519")


def add_commands(verbs: Verbs[_Parser]) -> None:
    """Register ``cert create|inspect|verify`` on the top-level sub-command action.

    Args:
        verbs: the object returned by ``ArgumentParser.add_subparsers()``.
    """
    cert = verbs.add_parser("cert", help="attested certificates (interoperable RA-TLS)")
    cert_verbs = cert.add_subparsers(dest="cert_verb", required=True, parser_class=type(cert))

    create_p = cert_verbs.add_parser("create", help="make a key and an attested certificate")
    create_p.add_argument("--sim", action="store_true", help="use the simulated AMD-SP")
    create_p.add_argument("--product", type=_product_arg, default="Genoa")
    create_p.add_argument(
        "--key", type=Path, required=True, help="private key (PEM); created if it does not exist"
    )
    create_p.add_argument("--key-type", choices=_KEY_TYPES, default="p256")
    create_p.add_argument("--out", type=Path, required=True, help="certificate output (PEM)")
    create_p.add_argument("--nonce", type=_hex_arg, default=None, metavar="HEX")
    create_p.add_argument(
        "--vtpm",
        action="store_true",
        help="with --sim: boot a simulated SVSM vTPM (swtpm) and carry its evidence too",
    )
    create_p.add_argument(
        "--sim-dir", type=Path, default=None, help="where the simulator keeps its identity"
    )
    create_p.set_defaults(handler=create)

    inspect_p = cert_verbs.add_parser("inspect", help="show a certificate's evidence and binding")
    inspect_p.add_argument("cert", type=Path)
    inspect_p.add_argument("--json", action="store_true")
    inspect_p.set_defaults(handler=inspect)

    verify_p = cert_verbs.add_parser("verify", help="verify and appraise a certificate's evidence")
    verify_p.add_argument("cert", type=Path)
    verify_p.add_argument("--policy", type=Path, default=None)
    verify_p.add_argument(
        "--trust-simulator",
        action="store_true",
        help="accept the simulated AMD root (proves nothing about hardware)",
    )
    verify_p.add_argument("--at", type=_time_arg, default=None, metavar="ISO8601")
    verify_p.add_argument("--nonce", type=_hex_arg, default=None, metavar="HEX")
    verify_p.add_argument("--json", action="store_true")
    verify_p.set_defaults(handler=verify)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    try:
        write_atomically(path, data, mode=0o600 if private else 0o644)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc


def _load_or_make_key(
    path: Path, key_type: str
) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    if path.exists():
        try:
            key = serialization.load_pem_private_key(_read(path, "key"), password=None)
        except (ValueError, TypeError) as exc:
            raise CliError(f"{path} is not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise CliError(f"{path}: use an ECDSA P-256/P-384 or Ed25519 key")
        return key
    made: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if key_type == "ed25519":
        made = ed25519.Ed25519PrivateKey.generate()
    else:
        made = ec.generate_private_key(ec.SECP256R1() if key_type == "p256" else ec.SECP384R1())
    pem = made.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, private=True)
    return made


def create(args: argparse.Namespace) -> int:
    """``ratls cert create``: a key and a self-signed certificate with SNP evidence."""
    if args.nonce is not None and not args.nonce:
        raise CliError("--nonce must not be empty")
    if args.vtpm and not args.sim:
        raise CliError("--vtpm needs --sim (on hardware the vTPM path is not wired here yet)")
    key = _load_or_make_key(args.key, args.key_type)
    builder = AttestedCertificateBuilder().private_key(key)
    if args.nonce is not None:
        builder = builder.nonce(args.nonce)
    if args.sim and args.vtpm:
        cert = _sign_with_simulated_vtpm(args, builder)
        source = f"simulated {args.product} with an SVSM vTPM"
    else:
        if args.sim:
            builder = builder.snp_evidence(_sim_attester(args))
            source = f"simulated {args.product}"
        else:
            builder = builder.snp_evidence(_hardware_attester)
            source = "this machine's SEV-SNP guest interface"
        cert = _sign(builder)
    _write(args.out, cert.public_bytes(serialization.Encoding.PEM))
    print(f"wrote {args.out} (evidence from {source}) with key {args.key}")
    print(
        f"  valid {cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()}"
    )
    return EXIT_OK


def _sign(builder: AttestedCertificateBuilder) -> x509.Certificate:
    try:
        return builder.sign(now=datetime.now(UTC))
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _simulator(args: argparse.Namespace) -> SimulatedAmdSp:
    from ._amd_certs import KeyKind
    from .sim import SimulatedAmdSp

    product = ProductLine(args.product)
    state = (args.sim_dir or default_sim_dir()) / f"{product.value.lower()}-vcek"
    try:
        return SimulatedAmdSp.load_or_generate(state, product, key_kind=KeyKind.VCEK)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot use the simulator state in {state}: {exc}") from exc


def _sign_with_simulated_vtpm(
    args: argparse.Namespace, builder: AttestedCertificateBuilder
) -> x509.Certificate:
    from .sim._svsm import SimulatedSvsm

    sim = _simulator(args)
    chain = SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)
    with SimulatedSvsm(sim) as vm:

        def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
            return vm.guest_report(report_data), chain

        def collect(binder: bytes, nonce: bytes) -> bytes:
            return vm.collect_evidence(binder=binder, nonce=nonce).to_bytes()

        return _sign(builder.snp_evidence(attest).vtpm_evidence(collect))


def _sim_attester(args: argparse.Namespace) -> Any:  # noqa: ANN401 - a SnpAttester
    sim = _simulator(args)
    chain = SnpEndorsements(leaf=sim.leaf, intermediate=sim.ask, root=sim.ark)

    def attest(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
        return sim.build_report(report_data=report_data).to_bytes(), chain

    return attest


def _hardware_attester(report_data: bytes) -> tuple[bytes, SnpEndorsements | None]:
    from .attesters import SnpGuestAttester

    guest = SnpGuestAttester().get_report(report_data, vmpl=0)
    chain = SnpEndorsements.from_cert_table(guest.certs) if guest.certs else None
    return guest.report, chain


def _load(path: Path) -> x509.Certificate:
    return load_evidence_certificate(_read(path, "certificate"))


def inspect(args: argparse.Namespace) -> int:
    """``ratls cert inspect``: what the certificate carries; exit 1 if the binding is broken."""
    cert = _load(args.cert)
    found = inspect_evidence_certificate(cert)
    described = found.describe()
    described["subject"] = cert.subject.rfc4514_string()
    described["not_before"] = cert.not_valid_before_utc.isoformat()
    described["not_after"] = cert.not_valid_after_utc.isoformat()
    snp = _snp_summary(found)
    if snp is not None:
        described["snp"] = snp
    if args.json:
        print_json(described)
        return EXIT_OK
    print(f"evidence       {found.evidence_type.value}")
    tag = f", tag {int(found.tag)}" if found.tag is not None else ""
    print(f"carried in     {found.carrier} ({found.carrier_oid}{tag})")
    print(f"subject        {described['subject']}")
    print(f"valid          {described['not_before']} .. {described['not_after']}")
    if found.binding is BindingStatus.VERIFIED:
        print(f"binding        verified: {found.binding_detail}")
    else:
        print(f"binding        NOT CHECKED: {found.binding_detail}")
    if found.claims is not None:
        for key, value in found.claims.entries:
            print(f"claim          {key} = {value.hex()}")
    if found.report_data is not None:
        print(f"report data    {found.report_data.hex()}")
    if snp is not None:
        for field, shown in snp.items():
            print(f"snp {field:<10} {shown}")
    if found.cmw is not None:
        names = f"{found.cmw.leaf_label}, {found.cmw.intermediate_label}, ark"
        print(f"endorsements   {names} (id-pe-cmw)")
        if found.cmw.vtpm is not None:
            print("vtpm           evidence bundle present (id-pe-cmw)")
    else:
        print("endorsements   none in the certificate")
    if found.also_present:
        print(f"also present   {', '.join(found.also_present)}")
    return EXIT_OK


def _snp_summary(found: CertificateEvidence) -> dict[str, object] | None:
    if found.evidence_type is not EvidenceType.SNP_REPORT:
        return None
    try:
        report = parse_snp_report(found.evidence)
    except EvidenceFormatError:  # pragma: no cover - inspect already parsed it
        return None
    return {
        "version": report.version,
        "vmpl": report.vmpl,
        "measurement": report.measurement.hex(),
        "debug": report.policy.debug,
        "reported_tcb": str(report.reported_tcb),
    }


def verify(args: argparse.Namespace) -> int:
    """``ratls cert verify``: exit 0 only when binding, age, chain, signature and policy pass."""
    cert = _load(args.cert)
    policy = load_policy(args.policy) if args.policy is not None else None
    at = args.at or datetime.now(UTC)
    result = verify_evidence_certificate(
        cert,
        policy=policy,
        at=at,
        trust_simulator=args.trust_simulator,
        expected_nonce=args.nonce,
    )
    if args.json:
        print_json(result.claims())
        return EXIT_OK
    print_result(result)
    age = (at - cert.not_valid_before_utc).total_seconds()
    freshness = "replayable (bounded by its age)" if result.replayable else "nonce matched"
    print(f"  carried in     certificate, {freshness}; age {age:.0f} s")
    return EXIT_OK
