"""``ratls tpm|azure|vtpm ...``: TPM quotes, credentials and SNP + vTPM chains from the shell.

The verbs follow tpm2-tools, so files and flags users already have keep working:

* ``ratls tpm checkquote -u AK -m MSG -s SIG -f PCRS -g sha256 -q HEX`` - like
  ``tpm2_checkquote``: AK as TPM2B_PUBLIC (``tpm2_readpublic -o``) or PEM, MSG the
  TPMS_ATTEST (``tpm2_quote -m``), SIG the TPMT_SIGNATURE (``tpm2_quote -s``), PCRS the
  serialized PCR file (``tpm2_quote -o``);
* ``ratls tpm makecredential -u EK -s SECRET -n AK_NAME_HEX -o OUT`` - like
  ``tpm2_makecredential``; the output is the credential file ``tpm2_activatecredential -i``
  reads;
* ``ratls azure verify --hcl-report HCL --certs DIR -m MSG -s SIG -f PCRS -q HEX`` - the whole
  Azure chain from what a guest reads with ``tpm2_nvread 0x01400001`` and ``tpm2_quote``;
* ``ratls vtpm attest --sim --out DIR`` and ``ratls vtpm verify DIR`` - the SNP -> EK -> AK ->
  quote chain, simulated end to end with swtpm.

tpm2-tools' serialized PCR file is a memory dump of its C structures in host byte order
(little-endian here): a TPML_PCR_SELECTION of 132 bytes (count u32, then 16 slots of
{hash u16, sizeofSelect u8, pcrSelect[4], one padding byte}), a u32 number of TPML_DIGEST
blocks, and that many 532-byte TPML_DIGEST blocks (count u32, then 8 slots of {size u16,
buffer[64]}).  The values follow the selection: bank by bank, ascending PCR index.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ._azure_hcl import parse_hcl_report
from ._errors import BindingMismatch, EvidenceFormatError, SignatureMismatch
from ._files import write_atomically
from ._policy import load_policy
from ._tpm_credential import make_credential
from ._tpm_quote import VerifiedQuote, verify_quote
from ._tpm_structs import (
    AK_REQUIRED_ATTRIBUTES,
    ObjectAttributes,
    TpmAlgId,
    TpmlPcrSelection,
    TpmsPcrSelection,
    TpmsQuoteInfo,
    TpmtPublic,
    TpmtScheme,
    digest_size,
    parse_tpm2b_public,
    parse_tpms_attest,
    parse_tpmt_signature,
)
from ._vtpm_evidence import (
    VerifiedVtpmEvidence,
    VtpmEvidence,
    VtpmProfile,
    parse_vtpm_evidence,
    to_attestation_result,
    verify_vtpm_evidence,
)
from .cli import EXIT_OK, CliError, print_json

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from ._policy import Policy
    from .cli import Verbs, _Parser

__all__ = [
    "TPM2_TOOLS_PCRS_DIGEST_BLOCK_SIZE",
    "TPM2_TOOLS_PCRS_SELECTION_SIZE",
    "Tpm2ToolsPcrs",
    "add_commands",
    "azure_verify",
    "encode_tpm2_tools_pcrs",
    "parse_tpm2_tools_pcrs",
    "tpm_checkquote",
    "tpm_makecredential",
    "vtpm_attest",
    "vtpm_verify",
]

#: Size of tpm2-tools' in-memory TPML_PCR_SELECTION (16 bank slots of 8 bytes, plus count).
TPM2_TOOLS_PCRS_SELECTION_SIZE: Final = 4 + 16 * 8
#: Size of one in-memory TPML_DIGEST (8 slots of a u16 size and a 64-byte buffer, plus count).
TPM2_TOOLS_PCRS_DIGEST_BLOCK_SIZE: Final = 4 + 8 * (2 + 64)
_MAX_BANKS: Final = 16
_DIGESTS_PER_BLOCK: Final = 8
#: More digest blocks than 4 banks x 24 PCRs / 1 per block could ever need is malformed.
_MAX_DIGEST_BLOCKS: Final = 96
_PCRS: Final = "tpm2-tools PCR file"
_HASH_NAMES: Final[Mapping[str, TpmAlgId]] = {
    "sha1": TpmAlgId.SHA1,
    "sha256": TpmAlgId.SHA256,
    "sha384": TpmAlgId.SHA384,
    "sha512": TpmAlgId.SHA512,
}
_MAX_INPUT: Final = 1 << 20  # no input file of these commands is anywhere near 1 MiB


# --------------------------------------------------------------------------------------
# tpm2-tools serialized PCR file
# --------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Tpm2ToolsPcrs:
    """The contents of a tpm2-tools serialized PCR file.

    Attributes:
        selection: the PCR selection, in the file's bank order.
        values: (bank, index, value) in the file's order (the selection's).
        block_sizes: how many digests each TPML_DIGEST block held (kept so that encoding
            reproduces the file byte for byte).
    """

    selection: TpmlPcrSelection
    values: tuple[tuple[TpmAlgId, int, bytes], ...]
    block_sizes: tuple[int, ...]

    def mapping(self) -> dict[TpmAlgId, dict[int, bytes]]:
        """The values as ``{bank: {index: value}}``."""
        out: dict[TpmAlgId, dict[int, bytes]] = {}
        for bank, index, value in self.values:
            out.setdefault(bank, {})[index] = value
        return out

    def to_bytes(self) -> bytes:
        """Encode in tpm2-tools' serialized layout (little-endian)."""
        return encode_tpm2_tools_pcrs(self.selection, self.values, block_sizes=self.block_sizes)


def _pcrs_fail(message: str, offset: int | None = None) -> EvidenceFormatError:
    return EvidenceFormatError(message, structure=_PCRS, offset=offset)


def encode_tpm2_tools_pcrs(
    selection: TpmlPcrSelection,
    values: tuple[tuple[TpmAlgId, int, bytes], ...] | Mapping[TpmAlgId, Mapping[int, bytes]],
    *,
    block_sizes: tuple[int, ...] | None = None,
) -> bytes:
    """Write PCR values the way ``tpm2_quote -o`` does (``tpm2_checkquote -f`` reads it).

    Args:
        selection: the quoted selection (at most 16 banks, 4 select bytes each).
        values: the values, as triples in selection order or as a mapping.
        block_sizes: digests per TPML_DIGEST block; 8 per block by default.

    Returns:
        The file contents.

    Raises:
        ValueError: a value is missing, or the selection does not fit the layout.
    """
    if len(selection.pcr_selections) > _MAX_BANKS:
        raise ValueError("more than 16 banks")
    lookup: dict[tuple[int, int], bytes] = {}
    if isinstance(values, tuple):
        lookup = {(int(b), i): v for b, i, v in values}
    else:
        lookup = {(int(b), i): v for b, vs in values.items() for i, v in vs.items()}
    out = bytearray(struct.pack("<I", len(selection.pcr_selections)))
    ordered: list[bytes] = []
    for sel in selection.pcr_selections:
        if len(sel.pcr_select) > 4:
            raise ValueError("tpm2-tools holds at most 4 select bytes per bank")
        out += struct.pack("<HB", sel.hash, len(sel.pcr_select))
        out += sel.pcr_select.ljust(4, b"\0") + b"\0"
        for index in sel.indices():
            try:
                ordered.append(lookup[(int(sel.hash), index)])
            except KeyError:
                raise ValueError(f"no value for PCR {sel.hash:#06x}:{index}") from None
    out += bytes(8 * (_MAX_BANKS - len(selection.pcr_selections)))
    sizes = list(block_sizes) if block_sizes is not None else []
    if block_sizes is None:
        remaining = len(ordered)
        while remaining:
            sizes.append(min(_DIGESTS_PER_BLOCK, remaining))
            remaining -= sizes[-1]
    if sum(sizes) != len(ordered) or any(not 0 <= s <= _DIGESTS_PER_BLOCK for s in sizes):
        raise ValueError("block sizes do not add up to the selected PCRs")
    out += struct.pack("<I", len(sizes))
    position = 0
    for size in sizes:
        out += struct.pack("<I", size)
        for slot in range(_DIGESTS_PER_BLOCK):
            if slot < size:
                digest = ordered[position + slot]
                out += struct.pack("<H", len(digest)) + digest.ljust(64, b"\0")
            else:
                out += bytes(66)
        position += size
    return bytes(out)


def parse_tpm2_tools_pcrs(data: bytes) -> Tpm2ToolsPcrs:
    """Read a tpm2-tools serialized PCR file strictly.

    Every unused slot and padding byte must be zero, each digest must have its bank's
    size, the number of digests must equal the number of selected PCRs, and the file must
    end exactly after the last block.

    Args:
        data: the file contents.

    Returns:
        The selection and the values.

    Raises:
        EvidenceFormatError: the file does not follow the layout.
    """
    data = bytes(data)
    if len(data) < TPM2_TOOLS_PCRS_SELECTION_SIZE + 4:
        raise _pcrs_fail(f"truncated: {len(data)} bytes", 0)
    (count,) = struct.unpack_from("<I", data, 0)
    if count > _MAX_BANKS:
        raise _pcrs_fail(f"{count} banks (at most 16)", 0)
    selections: list[TpmsPcrSelection] = []
    for slot in range(_MAX_BANKS):
        offset = 4 + 8 * slot
        raw = data[offset : offset + 8]
        if slot >= count:
            if any(raw):
                raise _pcrs_fail("unused selection slot is not zero", offset)
            continue
        alg, size = struct.unpack_from("<HB", raw, 0)
        if alg not in {int(a) for a in _HASH_NAMES.values()}:
            raise _pcrs_fail(f"unsupported bank {alg:#06x}", offset)
        if not 1 <= size <= 4 or any(raw[3 + size :]):
            raise _pcrs_fail(f"sizeofSelect {size} or padding is invalid", offset + 2)
        selections.append(TpmsPcrSelection(hash=TpmAlgId(alg), pcr_select=raw[3 : 3 + size]))
    banks = [s.hash for s in selections]
    if len(set(banks)) != len(banks):
        raise _pcrs_fail("a bank is selected twice", 4)
    selection = TpmlPcrSelection(pcr_selections=tuple(selections))
    wanted = [(s.hash, i) for s in selections for i in s.indices()]
    pos = TPM2_TOOLS_PCRS_SELECTION_SIZE
    (blocks,) = struct.unpack_from("<I", data, pos)
    if blocks > _MAX_DIGEST_BLOCKS:
        raise _pcrs_fail(f"{blocks} digest blocks", pos)
    pos += 4
    expected_len = pos + blocks * TPM2_TOOLS_PCRS_DIGEST_BLOCK_SIZE
    if len(data) != expected_len:
        what = "truncated" if len(data) < expected_len else "trailing bytes"
        raise _pcrs_fail(f"{what}: {len(data)} bytes, expected {expected_len}", len(data))
    digests: list[bytes] = []
    sizes: list[int] = []
    for _ in range(blocks):
        (n,) = struct.unpack_from("<I", data, pos)
        if n > _DIGESTS_PER_BLOCK:
            raise _pcrs_fail(f"TPML_DIGEST count {n} (at most 8)", pos)
        sizes.append(n)
        for slot in range(_DIGESTS_PER_BLOCK):
            at = pos + 4 + 66 * slot
            (size,) = struct.unpack_from("<H", data, at)
            body = data[at + 2 : at + 66]
            if slot >= n:
                if size or any(body):
                    raise _pcrs_fail("unused digest slot is not zero", at)
                continue
            if not 0 < size <= 64 or any(body[size:]):
                raise _pcrs_fail(f"digest size {size} or padding is invalid", at)
            digests.append(body[:size])
        pos += TPM2_TOOLS_PCRS_DIGEST_BLOCK_SIZE
    if len(digests) != len(wanted):
        raise _pcrs_fail(f"{len(digests)} digests for {len(wanted)} selected PCRs")
    values = []
    for (bank, index), digest in zip(wanted, digests, strict=True):
        if len(digest) != digest_size(bank):
            raise _pcrs_fail(f"{bank.name.lower()} PCR {index} has a {len(digest)}-byte value")
        values.append((bank, index, digest))
    return Tpm2ToolsPcrs(selection=selection, values=tuple(values), block_sizes=tuple(sizes))


# --------------------------------------------------------------------------------------
# Reading and writing the input files
# --------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_INPUT + 1)
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > _MAX_INPUT:
        raise CliError(f"{what} {path} is larger than {_MAX_INPUT} bytes")
    return data


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc


def _hex(value: str, what: str) -> bytes:
    text = value.strip()
    if text.lower().startswith("0x"):
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{what} is not a hex string: {value!r}") from None


def _hash_alg(name: str) -> TpmAlgId:
    try:
        return _HASH_NAMES[name.lower()]
    except KeyError:
        raise CliError(f"unknown hash {name!r}; choose {', '.join(_HASH_NAMES)}") from None


def _load_ak(data: bytes, signature: bytes, hash_alg: TpmAlgId) -> TpmtPublic:
    """An AK from TPM2B_PUBLIC, or from PEM with the signature's scheme and ``hash_alg``."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise EvidenceFormatError(f"not a PEM public key: {exc}", structure="AK") from exc
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise EvidenceFormatError("the AK must be an RSA or EC key", structure="AK")
        sig = parse_tpmt_signature(signature)
        # A PEM key says nothing about the signing scheme: take the signature's, but only
        # with the hash the caller demanded (-g), so no weaker hash slips through.
        try:
            return TpmtPublic.from_public_key(
                key,
                object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
                scheme=TpmtScheme(scheme=sig.sig_alg, hash_alg=hash_alg),
            )
        except ValueError as exc:
            raise EvidenceFormatError(str(exc), structure="AK") from exc
    return parse_tpm2b_public(data)


def _check_hash(ak: TpmtPublic, hash_alg: TpmAlgId) -> None:
    if ak.parameters.scheme.hash_alg is not hash_alg:
        raise SignatureMismatch(
            "tpm.quote.signature.hash",
            expected=hash_alg.name,
            actual=ak.parameters.scheme.hash_alg.name,
            detail="the AK signs with another hash than -g names",
        )


def _quote_inputs(
    args: argparse.Namespace,
) -> tuple[bytes, bytes, Tpm2ToolsPcrs, TpmAlgId, bytes]:
    message = _read(args.message, "quote message")
    signature = _read(args.signature, "signature")
    pcrs = parse_tpm2_tools_pcrs(_read(args.pcrs, "PCR file"))
    return message, signature, pcrs, _hash_alg(args.hash), _hex(args.qualification or "", "-q")


def _check_selection(message: bytes, pcrs: Tpm2ToolsPcrs) -> None:
    """The PCR file must describe exactly the PCRs the signed quote selects."""
    attest = parse_tpms_attest(message)
    if not isinstance(attest.attested, TpmsQuoteInfo):
        return  # verify_quote names the wrong type
    signed = set(attest.attested.pcr_select.selected())
    supplied = set(pcrs.selection.selected())
    if signed != supplied:
        raise BindingMismatch(
            "tpm.pcr_selection",
            expected=_describe(attest.attested.pcr_select),
            actual=_describe(pcrs.selection),
            detail="the PCR file does not describe the PCRs the quote signed",
        )


def _describe(selection: TpmlPcrSelection) -> str:
    parts = [
        f"{s.hash.name.lower()}:{','.join(str(i) for i in s.indices()) or '-'}"
        for s in selection.pcr_selections
    ]
    return "+".join(parts) or "(none)"


def _print_quote(quote: VerifiedQuote, *, name_known: bool = True) -> None:
    clock = quote.clock_info
    name = quote.ak_name.hex() if name_known else "(unknown: the AK was given as a bare key)"
    print(f"  ak name        {name}")
    print(f"  qualification  {quote.extra_data.hex() or '(empty)'}")
    print(
        f"  clock          {clock.clock} ms, resets {clock.reset_count}, "
        f"restarts {clock.restart_count}, safe {clock.safe}"
    )
    print(f"  pcr digest     {quote.pcr_digest.hex()}")
    for bank, index, value in quote.pcr_values:
        print(f"  {bank.name.lower():>6}:{index:<2}      {value.hex()}")


# --------------------------------------------------------------------------------------
# tpm checkquote / makecredential
# --------------------------------------------------------------------------------------


def tpm_checkquote(args: argparse.Namespace) -> int:
    """``ratls tpm checkquote``: signature, qualification and PCR digest, like tpm2_checkquote.

    Raises:
        EvidenceVerificationError: a check failed (exit 1 through ``ratls.cli.main``).
        RatlsError, CliError: unusable input (exit 2).
    """
    message, signature, pcrs, hash_alg, qualification = _quote_inputs(args)
    raw_ak = _read(args.ak, "AK")
    ak = _load_ak(raw_ak, signature, hash_alg)
    _check_hash(ak, hash_alg)
    _check_selection(message, pcrs)
    quote = verify_quote(
        attest=message,
        signature=signature,
        ak_public=ak,
        expected_extra_data=qualification,
        pcr_values=pcrs.mapping(),
        allowed_hashes={hash_alg},
    )
    print("PASS: quote signature, qualification and PCR digest verified")
    _print_quote(quote, name_known=not raw_ak.lstrip().startswith(b"-----BEGIN"))
    return EXIT_OK


def tpm_makecredential(args: argparse.Namespace) -> int:
    """``ratls tpm makecredential``: a credential file for tpm2_activatecredential.

    Raises:
        RatlsError, CliError: unusable input (exit 2).
    """
    ek = parse_tpm2b_public(_read(args.ek, "EK public area"))
    secret = _read(args.secret, "secret")
    name = _hex(args.name, "-n")
    try:
        credential = make_credential(ek_public=ek, ak_name=name, secret=secret)
    except ValueError as exc:
        raise CliError(f"cannot make the credential: {exc}") from exc
    _write(args.output, credential.to_tpm2_tools_file())
    print(f"wrote {args.output} ({len(credential.to_tpm2_tools_file())} bytes)")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# azure verify
# --------------------------------------------------------------------------------------


def _policy(args: argparse.Namespace) -> Policy | None:

    return load_policy(args.policy) if args.policy is not None else None


def _print_verified(verified: VerifiedVtpmEvidence, as_json: bool) -> None:
    from ._cli_snp import print_result

    result = to_attestation_result(verified)
    if as_json:
        print_json({**result.claims(), "vtpm": verified.claims()})
        return
    print_result(result)
    print(f"PASS: vTPM chain verified ({verified.profile.value})")
    print(f"  ak binding     {verified.ak_binding.value}")
    if verified.ek_public is not None:
        print(f"  ek name        {verified.ek_public.name().hex()}")
    _print_quote(verified.quote, name_known=verified.profile is not VtpmProfile.AZURE)


def azure_verify(args: argparse.Namespace) -> int:
    """``ratls azure verify``: HCL report -> SNP report -> HCLAkPub -> quote.

    Raises:
        EvidenceVerificationError: a check failed (exit 1).
        RatlsError, CliError: unusable input (exit 2).
    """
    from ._cli_snp import load_endorsements_dir

    hcl = parse_hcl_report(_read(args.hcl_report, "HCL report"), nv_padding=True)
    endorsements = load_endorsements_dir(args.certs)
    message, signature, pcrs, hash_alg, qualification = _quote_inputs(args)
    if args.ak is not None:
        ak = _load_ak(_read(args.ak, "AK"), signature, hash_alg)
    else:
        # The AK is the runtime claims' HCLAkPub; the quote's scheme comes from the
        # signature, its hash from -g.
        sig = parse_tpmt_signature(signature)
        ak = TpmtPublic.from_public_key(
            hcl.runtime_claims().ak_pub.public_key(),
            object_attributes=AK_REQUIRED_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH,
            scheme=TpmtScheme(scheme=sig.sig_alg, hash_alg=hash_alg),
        )
    _check_hash(ak, hash_alg)
    _check_selection(message, pcrs)
    evidence = VtpmEvidence(
        profile=VtpmProfile.AZURE,
        hcl_report=hcl.to_bytes(),
        certs=tuple(
            c.public_bytes(Encoding.DER)
            for c in (endorsements.leaf, endorsements.intermediate, endorsements.root)
        ),
        ak_public=ak.to_tpm2b(),
        quote_attest=message,
        quote_signature=signature,
        pcrs=tuple(sorted(pcrs.values, key=lambda e: (int(e[0]), e[1]))),
    )
    verified = verify_vtpm_evidence(
        evidence,
        policy=_policy(args),
        at=args.at or datetime.now(UTC),
        expected_binder=qualification,
        trust_simulator=args.trust_simulator,
        allowed_hashes={hash_alg},
    )
    _print_verified(verified, args.json)
    return EXIT_OK


# --------------------------------------------------------------------------------------
# vtpm attest / verify
# --------------------------------------------------------------------------------------

_EVIDENCE_FILE: Final = "evidence.cbor"
_QUALIFICATION_FILE: Final = "qualification.hex"


def vtpm_attest(args: argparse.Namespace) -> int:
    """``ratls vtpm attest --sim``: boot a simulated SVSM VM and write its evidence.

    Writes ``evidence.cbor`` (the bundle), ``qualification.hex`` (the binder used), and the
    parts in tpm2-tools form: ``ak.pub`` (TPM2B_PUBLIC), ``quote.msg``, ``quote.sig``,
    ``quote.pcrs``, ``report.bin``, ``ek.pub`` or ``manifest.bin`` and ``nonce.bin``, and
    the certificates.

    Raises:
        CliError: without ``--sim`` (no hardware path from the CLI yet) or on file errors.
        AttesterError: the simulator failed.
    """
    if not args.sim:
        raise CliError(
            "only --sim is available from the command line; on a real guest use "
            "ratls.attesters.GuestVtpmAttester from Python"
        )
    from ._cli_snp import default_sim_dir
    from ._snp_report import ProductLine
    from .sim import SimulatedAmdSp
    from .sim._svsm import SimulatedSvsm

    binder = _hex(args.qualification, "-q") if args.qualification else os.urandom(32)
    sp = SimulatedAmdSp.load_or_generate(args.sim_dir or default_sim_dir(), ProductLine.GENOA)
    with SimulatedSvsm(sp, profile=VtpmProfile(args.profile)) as vm:
        evidence = vm.collect_evidence(binder=binder)
    out: Path = args.out
    files = {
        _EVIDENCE_FILE: evidence.to_bytes(),
        _QUALIFICATION_FILE: binder.hex().encode() + b"\n",
        "ak.pub": evidence.ak_public,
        "quote.msg": evidence.quote_attest,
        "quote.sig": evidence.quote_signature,
        "quote.pcrs": _pcr_file(evidence),
        "report.bin": evidence.snp_report or b"",
        "vcek.der": evidence.certs[0],
        "ask.der": evidence.certs[1],
        "ark.der": evidence.certs[2],
    }
    if evidence.svsm_nonce is not None and evidence.svsm_manifest is not None:
        files["nonce.bin"] = evidence.svsm_nonce
        files["manifest.bin"] = evidence.svsm_manifest
    if evidence.ek_public is not None:
        files["ek.pub"] = evidence.ek_public
    for name, data in files.items():
        _write(out / name, data)
    print(
        f"wrote simulated {args.profile} evidence ({len(files[_EVIDENCE_FILE])} bytes) "
        f"and its parts to {out}"
    )
    return EXIT_OK


def _pcr_file(evidence: VtpmEvidence) -> bytes:
    attest = parse_tpms_attest(evidence.quote_attest)
    assert isinstance(attest.attested, TpmsQuoteInfo)  # noqa: S101 - our own quote
    return encode_tpm2_tools_pcrs(attest.attested.pcr_select, evidence.pcr_mapping())


def vtpm_verify(args: argparse.Namespace) -> int:
    """``ratls vtpm verify DIR``: verify the bundle in DIR (written by ``vtpm attest``).

    Without ``-q`` the qualification is read from DIR, which proves nothing about
    freshness; a real verifier passes the binder it chose.

    Raises:
        EvidenceVerificationError: a check failed (exit 1).
        RatlsError, CliError: unusable input (exit 2).
    """
    directory: Path = args.directory
    evidence = parse_vtpm_evidence(_read(directory / _EVIDENCE_FILE, "evidence"))
    if args.qualification is not None:
        binder = _hex(args.qualification, "-q")
    else:
        binder = _hex(
            _read(directory / _QUALIFICATION_FILE, "qualification").decode("ascii", "replace"),
            _QUALIFICATION_FILE,
        )
    verified = verify_vtpm_evidence(
        evidence,
        policy=_policy(args),
        at=args.at or datetime.now(UTC),
        expected_binder=binder,
        trust_simulator=args.trust_simulator,
    )
    _print_verified(verified, args.json)
    return EXIT_OK


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


def _time(value: str) -> datetime:
    import argparse as _argparse

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _quote_arguments(parser: argparse.ArgumentParser, *, ak_required: bool) -> None:
    parser.add_argument(
        "-u", "--public", dest="ak", type=Path, required=ak_required, help="AK: TPM2B_PUBLIC or PEM"
    )
    parser.add_argument("-m", "--message", type=Path, required=True, help="TPMS_ATTEST")
    parser.add_argument("-s", "--signature", type=Path, required=True, help="TPMT_SIGNATURE")
    parser.add_argument(
        "-f", "--pcr", dest="pcrs", type=Path, required=True, help="tpm2-tools serialized PCRs"
    )
    parser.add_argument("-g", "--hash-algorithm", dest="hash", default="sha256")
    parser.add_argument(
        "-q", "--qualification", default=None, metavar="HEX", help="expected qualifying data"
    )


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--at", type=_time, default=None, metavar="ISO8601")
    parser.add_argument(
        "--trust-simulator",
        action="store_true",
        help="accept the simulated AMD root (proves nothing about hardware)",
    )
    parser.add_argument("--json", action="store_true")


def add_commands(verbs: Verbs[_Parser]) -> None:
    """Register ``tpm``, ``azure`` and ``vtpm`` with the ``ratls`` command.

    Args:
        verbs: the top-level sub-command action of the ``ratls`` parser.
    """
    # Nested verbs use the same parser class as the top level (so usage errors exit 2).
    parser_class = type(verbs.add_parser("tpm", help="TPM 2.0 quotes and credentials"))
    tpm = verbs.choices["tpm"]
    tpm_verbs = tpm.add_subparsers(dest="tpm_verb", required=True, parser_class=parser_class)
    check = tpm_verbs.add_parser("checkquote", help="verify a quote (like tpm2_checkquote)")
    _quote_arguments(check, ak_required=True)
    check.set_defaults(handler=tpm_checkquote)
    make = tpm_verbs.add_parser(
        "makecredential", help="seal a secret to an EK for an AK (like tpm2_makecredential)"
    )
    make.add_argument("-u", "--public", dest="ek", type=Path, required=True, help="EK TPM2B_PUBLIC")
    make.add_argument("-s", "--secret", type=Path, required=True, help="file with the secret")
    make.add_argument("-n", "--name", required=True, metavar="AK_NAME_HEX")
    make.add_argument("-o", "--credential-blob", dest="output", type=Path, required=True)
    make.set_defaults(handler=tpm_makecredential)

    azure = verbs.add_parser("azure", help="Azure confidential VMs (HCL report + vTPM)")
    azure_verbs = azure.add_subparsers(dest="azure_verb", required=True, parser_class=parser_class)
    az_verify = azure_verbs.add_parser("verify", help="verify HCL report, SNP report and quote")
    az_verify.add_argument("--hcl-report", type=Path, required=True, help="NV 0x01400001")
    az_verify.add_argument("--certs", type=Path, required=True, help="vcek|vlek, ask|asvk, ark")
    _quote_arguments(az_verify, ak_required=False)
    _verify_arguments(az_verify)
    az_verify.set_defaults(handler=azure_verify)

    vtpm = verbs.add_parser("vtpm", help="SNP + vTPM evidence (SVSM profiles)")
    vtpm_verbs = vtpm.add_subparsers(dest="vtpm_verb", required=True, parser_class=parser_class)
    attest = vtpm_verbs.add_parser("attest", help="produce evidence")
    attest.add_argument("--sim", action="store_true", help="simulated SVSM VM with swtpm")
    attest.add_argument(
        "--profile", choices=[VtpmProfile.SVSM.value, VtpmProfile.SVSM_PAPER.value], default="svsm"
    )
    attest.add_argument("--out", type=Path, required=True)
    attest.add_argument("-q", "--qualification", default=None, metavar="HEX")
    attest.add_argument("--sim-dir", type=Path, default=None)
    attest.set_defaults(handler=vtpm_attest)
    verify = vtpm_verbs.add_parser("verify", help="verify evidence written by vtpm attest")
    verify.add_argument("directory", type=Path)
    verify.add_argument("-q", "--qualification", default=None, metavar="HEX")
    _verify_arguments(verify)
    verify.set_defaults(handler=vtpm_verify)
