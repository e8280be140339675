"""``ratls spdm responder|requester``: SPDM 1.2 with CPU-TEE evidence from the command line.

The responder plays a confidential VM (``--sim``: the simulated AMD-SP, and with the
default ``--vtpm`` a swtpm-backed SVSM vTPM); the requester is the verifier and walks the
whole protocol, printing one line per step.  Both speak the spdm-emu socket framing (or
plain DSP0287 TCP), so DMTF's emulators can stand on the other side.

Handlers take the parsed namespace, return an exit code and raise
:class:`~ratls.RatlsError` subclasses for the command line's error mapping
(EvidenceVerificationError -> "FAIL:" and exit 1, any other -> exit 2).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import AttesterUnavailable, PolicyError, RatlsError, RemoteProtocolError
from ._files import write_atomically
from .cli import CliError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .cli import Verbs, _Parser
    from .spdm._tee import TeeAttester

__all__ = ["add_commands", "requester", "responder"]

_TRANSPORTS = ("mctp", "tcp", "none", "plain-tcp")


def add_commands(verbs: Verbs[_Parser]) -> None:
    """Register ``spdm responder`` and ``spdm requester`` on the top-level verbs.

    Args:
        verbs: the ``add_subparsers()`` action of the ``ratls`` parser.
    """
    spdm = verbs.add_parser("spdm", help="SPDM 1.2 requester and CPU-TEE responder")
    sub = spdm.add_subparsers(dest="spdm_verb", required=True)

    rsp = sub.add_parser("responder", help="serve SPDM as a (simulated) confidential VM")
    rsp.add_argument("--sim", action="store_true", help="use the simulated AMD-SP and vTPM")
    rsp.add_argument("--host", default="127.0.0.1", help="address to listen on")
    rsp.add_argument("--port", type=int, default=2323, help="port (0 picks a free one)")
    rsp.add_argument("--transport", choices=_TRANSPORTS, default="mctp")
    rsp.add_argument("--cert-out", type=Path, default=None, help="write the certificate (DER)")
    rsp.add_argument("--key", choices=("p384", "p256"), default="p384")
    rsp.add_argument("--product", choices=("milan", "genoa", "turin"), default="genoa")
    rsp.add_argument(
        "--vtpm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="quote a swtpm vTPM through the simulated SVSM (default on)",
    )
    rsp.add_argument(
        "--debug-guest", action="store_true", help="simulate a guest with POLICY.DEBUG set"
    )
    rsp.add_argument(
        "--measurement", type=_hex48, default=None, metavar="HEX", help="launch digest to simulate"
    )
    rsp.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    rsp.set_defaults(handler=responder)

    req = sub.add_parser("requester", help="authenticate a responder and open a session")
    req.add_argument("--host", required=True)
    req.add_argument("--port", type=int, default=2323)
    req.add_argument("--transport", choices=_TRANSPORTS, default="mctp")
    trust = req.add_mutually_exclusive_group(required=True)
    trust.add_argument("--trust-anchor", type=Path, default=None, help="root CA (DER): plain SPDM")
    trust.add_argument("--policy", type=Path, default=None, help="TEE appraisal policy")
    req.add_argument(
        "--trust-simulator",
        action="store_true",
        help="accept the simulated AMD root (proves nothing about hardware)",
    )
    req.add_argument("--echo", default=None, metavar="TEXT", help="send TEXT in the session")
    req.add_argument("--end", choices=("continue", "shutdown"), default="continue")
    req.add_argument("--timeout", type=float, default=30.0, help="socket timeout (s)")
    req.add_argument("--verbose", action="store_true", help="trace every message")
    req.set_defaults(handler=requester)


def _hex48(value: str) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex string: {value!r}") from None
    if len(data) != 48:
        raise argparse.ArgumentTypeError("a launch digest is 48 bytes (96 hex digits)")
    return data


def _print(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def _attester(args: argparse.Namespace) -> Iterator[tuple[TeeAttester, bool]]:
    from ._snp_report import ProductLine
    from .sim import simulated_amd_sp
    from .spdm._tee import SimulatedSnpAttester, SimulatedSvsmAttester

    measurement: bytes | None = args.measurement
    sp = simulated_amd_sp(ProductLine(args.product.capitalize()))
    if not args.vtpm or args.debug_guest:
        yield SimulatedSnpAttester(sp, measurement=measurement, debug=args.debug_guest), False
        return
    from .sim._svsm import SimulatedSvsm

    with SimulatedSvsm(sp, measurement=measurement) as svsm:
        yield SimulatedSvsmAttester(svsm, measurement=measurement), True


def responder(args: argparse.Namespace) -> int:
    """``ratls spdm responder``: serve until a requester sends SHUTDOWN.

    Returns:
        0 after SHUTDOWN.

    Raises:
        AttesterUnavailable: without ``--sim`` (no real-hardware responder yet).
        RatlsError: the simulator or vTPM could not start.
    """
    import trio

    from .spdm._io import TransportKind, serve_spdm_responder
    from .spdm._responder import Responder
    from .spdm._tee import TeeResponderIdentity

    if not args.sim:
        raise AttesterUnavailable(
            "only the simulated responder exists so far: pass --sim "
            "(a real guest needs configfs-tsm and /dev/tpmrm0 wiring)"
        )
    kind = TransportKind(args.transport)
    with _attester(args) as (attester, vtpm):
        identity = TeeResponderIdentity.create(attester, curve=args.key)
        if args.cert_out is not None:
            try:
                write_atomically(args.cert_out, identity.certificate_der)
            except OSError as exc:
                raise CliError(f"cannot write {args.cert_out}: {exc.strerror}") from exc
            _print(f"certificate written to {args.cert_out}")

        def make() -> Responder:
            return Responder(identity.responder_config(binding=kind.binding))

        def connected(peer: tuple[str, int]) -> None:
            _print(f"connection from {peer[0]} port {peer[1]}")

        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    functools.partial(
                        serve_spdm_responder,
                        make,
                        kind=kind,
                        host=args.host,
                        port=args.port,
                        on_connection=connected,
                    )
                )
                what = "SNP + vTPM" if vtpm else "SNP"
                _print(f"listening on {args.host} port {port} ({kind.value}, {what} evidence)")
                if args.port_file is not None:
                    args.port_file.write_text(f"{port}\n")

        trio.run(serve)
    _print("SHUTDOWN received")
    return 0


def requester(args: argparse.Namespace) -> int:
    """``ratls spdm requester``: run every step against a responder, printing each.

    Returns:
        0 when every step passed.

    Raises:
        EvidenceVerificationError: the responder's certificate or evidence failed.
        RatlsError: bad input, or a protocol or connection failure.
    """
    from ._policy import load_policy
    from .spdm._api import SpdmTrust, connect_spdm_session
    from .spdm._io import TransportKind
    from .spdm._transport import EmuCommand

    kind = TransportKind(args.transport)
    if args.trust_anchor is not None:
        try:
            anchor = args.trust_anchor.read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read the trust anchor: {exc}") from exc
        trust = SpdmTrust(trust_anchor=anchor)
    else:
        policy = load_policy(args.policy)
        trust = SpdmTrust(policy=policy, trust_simulator=args.trust_simulator)
    _print(f"SPDM requester -> {args.host} port {args.port} ({kind.value})")
    session = connect_spdm_session(
        args.host,
        args.port,
        transport=kind,
        trust=trust,
        establish=kind.supports_sessions,
        trace=_print,
        verbose=args.verbose,
        timeout=args.timeout,
    )
    end = EmuCommand.SHUTDOWN if args.end == "shutdown" else EmuCommand.CONTINUE
    try:
        if session.established:
            session.get_measurements()
            session.heartbeat()
            session.key_update()
            if args.echo is not None:
                probe = args.echo.encode()
                session.send(probe)
                answer = session.receive()
                if answer != probe:
                    raise RemoteProtocolError(f"application data came back as {answer!r}")
                _print(f"{'APPLICATION DATA':<22} ok  {len(probe)} bytes echoed in the session")
        else:
            _print(f"{'SESSION':<22} --  skipped: the {kind.value} transport has no sessions")
        session.close(end=end)
    except BaseException:
        with contextlib.suppress(RatlsError, OSError):
            session.close(end=end)
        raise
    if end is EmuCommand.SHUTDOWN and kind is not TransportKind.PLAIN_TCP:
        _print(f"{'SHUTDOWN':<22} ok  the responder is stopping")
    _print("all steps passed")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: ratls spdm ...")
