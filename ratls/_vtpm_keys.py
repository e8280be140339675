"""The vTPM keys an SVSM guest works with: EK and AK provisioning, quotes, activation.

Everything here drives a :class:`~ratls._tpm_device.Tpm` and nothing else, so the same
steps serve the real guest (``/dev/tpmrm0``, :class:`~ratls.attesters.GuestVtpmAttester`)
and the simulated one (swtpm, :class:`~ratls.sim.SimulatedSvsm`):
:func:`manufacture_vtpm` creates the EK from the TCG default template, persists it at
0x81010001 and creates and loads an AK under it; :func:`quote` and
:func:`activate_credential` use those keys; :func:`store_report_in_nv` stores a blob (the
SVSM-vTPM prototype's boot-time report) where an EK certificate would be.

These calls block (TPM commands); from trio, use ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._tpm_device import (
    EK_PERSISTENT_HANDLE,
    NV_INDEX_RSA2048_EK_CERT,
    Attestation,
    SigScheme,
    Tpm,
    TpmaNv,
    TpmCommandError,
    TpmRh,
)
from ._tpm_structs import (
    AK_TEMPLATE_ECC_P256,
    AK_TEMPLATE_RSA2048,
    EK_TEMPLATE_RSA2048,
    TpmAlgId,
    TpmtPublic,
    parse_tpm2b_public,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "VtpmIdentity",
    "activate_credential",
    "manufacture_vtpm",
    "quote",
    "store_report_in_nv",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class VtpmIdentity:
    """The keys a freshly manufactured vTPM holds after :func:`manufacture_vtpm`.

    Attributes:
        ek_handle: persistent handle of the EK (0x81010001).
        ek_public: the EK's TPM2B_PUBLIC as TPM2_ReadPublic returns it (what the
            SVSM-vTPM prototype hashes into REPORT_DATA).
        ek_tpmt_public: the EK's TPMT_PUBLIC, without the size prefix (the SVSM
            specification's vTPM service manifest).
        ek_name: the EK's Name.
        ak_handle: transient handle of the loaded AK.
        ak_public: the AK's TPM2B_PUBLIC.
        ak_private: the AK's TPM2B_PRIVATE (wrapped by the EK), to reload it.
        ak_name: the AK's Name (what MakeCredential binds the credential to).
    """

    ek_handle: int
    ek_public: bytes
    ek_tpmt_public: bytes
    ek_name: bytes
    ak_handle: int
    ak_public: bytes
    ak_private: bytes
    ak_name: bytes

    def ek(self) -> TpmtPublic:
        """The EK public area, parsed.

        Raises:
            EvidenceFormatError: if the stored bytes are malformed.
        """
        return parse_tpm2b_public(self.ek_public)

    def ak(self) -> TpmtPublic:
        """The AK public area, parsed.

        Raises:
            EvidenceFormatError: if the stored bytes are malformed.
        """
        return parse_tpm2b_public(self.ak_public)


def manufacture_vtpm(
    tpm: Tpm, *, ak_type: str = "ecc", endorsement_auth: bytes = b""
) -> VtpmIdentity:
    """Provision a vTPM's keys: create and persist the EK, create and load the AK.

    On a simulated SVSM this is its boot; on a real guest it recreates the same EK (the
    seed does not change while the VM runs) and makes a new AK.

    The EK comes from the TCG default RSA-2048 template (L-1) in the endorsement
    hierarchy and is made persistent at 0x81010001 (replacing whatever was there).  The
    AK is a restricted signing key created as a child of the EK, with the EK authorised
    by a policy session running PolicySecret(TPM_RH_ENDORSEMENT) - the EK's authPolicy.

    Args:
        tpm: a started TPM (``/dev/tpmrm0``, or swtpm from :class:`~ratls.sim.Swtpm`).
        ak_type: ``"ecc"`` (P-256, ECDSA-SHA256; the default) or ``"rsa"`` (RSA-2048,
            RSASSA-SHA256).  A P-256 AK is made at once and signs a quote several times
            faster (swtpm here: 0.4 ms against 1.9 ms per quote), and every attested
            connection waits for a quote on each side; verifiers accept both.
        endorsement_auth: the endorsement hierarchy's auth value.

    Returns:
        The EK and AK public areas, names and handles.

    Raises:
        ValueError: for an unknown ``ak_type``.
        TpmCommandError: if the TPM refuses a step.
        AttesterError: on transport errors.
    """
    templates = {"rsa": AK_TEMPLATE_RSA2048, "ecc": AK_TEMPLATE_ECC_P256}
    if ak_type not in templates:
        raise ValueError(f"ak_type must be 'rsa' or 'ecc', not {ak_type!r}")
    primary = tpm.create_primary(
        TpmRh.ENDORSEMENT, EK_TEMPLATE_RSA2048, hierarchy_auth=endorsement_auth
    )
    try:
        if EK_PERSISTENT_HANDLE in tpm.get_handles(EK_PERSISTENT_HANDLE, 1):
            tpm.evict_control(EK_PERSISTENT_HANDLE, EK_PERSISTENT_HANDLE)
        tpm.evict_control(primary.handle, EK_PERSISTENT_HANDLE)
    finally:
        tpm.flush_context(primary.handle)
    ek = tpm.read_public(EK_PERSISTENT_HANDLE)
    with tpm.endorsement_policy_session(endorsement_auth=endorsement_auth) as session:
        created = tpm.create(EK_PERSISTENT_HANDLE, templates[ak_type], parent_session=session)
    with tpm.endorsement_policy_session(endorsement_auth=endorsement_auth) as session:
        loaded = tpm.load(
            EK_PERSISTENT_HANDLE, created.private, created.public, parent_session=session
        )
    return VtpmIdentity(
        ek_handle=EK_PERSISTENT_HANDLE,
        ek_public=ek.public,
        ek_tpmt_public=ek.public[2:],
        ek_name=ek.name,
        ak_handle=loaded.handle,
        ak_public=created.public,
        ak_private=created.private,
        ak_name=loaded.name,
    )


def quote(
    tpm: Tpm,
    identity: VtpmIdentity,
    qualifying_data: bytes,
    selection: Mapping[TpmAlgId, Iterable[int]],
    scheme: SigScheme | None = None,
) -> Attestation:
    """Quote PCRs with the vTPM's AK.

    Args:
        tpm: the TPM holding ``identity``.
        identity: from :func:`manufacture_vtpm`.
        qualifying_data: extraData of the quote (the verifier's binder).
        selection: ``{hash_alg: PCR indices}``.
        scheme: signature scheme, ``None`` for the AK's own.

    Returns:
        TPM2B_ATTEST and TPMT_SIGNATURE.

    Raises:
        TpmCommandError: if the TPM refuses.
        AttesterError: on transport errors.
    """
    return tpm.quote(identity.ak_handle, qualifying_data, selection, scheme)


def activate_credential(
    tpm: Tpm,
    identity: VtpmIdentity,
    id_object: bytes,
    encrypted_secret: bytes,
    *,
    endorsement_auth: bytes = b"",
) -> bytes:
    """Answer a verifier's MakeCredential challenge for the vTPM's AK.

    Args:
        tpm: the TPM holding ``identity``.
        identity: from :func:`manufacture_vtpm`.
        id_object: TPM2B_ID_OBJECT, with its size prefix.
        encrypted_secret: TPM2B_ENCRYPTED_SECRET, with its size prefix.
        endorsement_auth: the endorsement hierarchy's auth value.

    Returns:
        The secret the verifier chose.

    Raises:
        ValueError: if a size prefix does not match its structure's length.
        TpmCommandError: e.g. ``TPM_RC_INTEGRITY`` for a credential made for another
            AK or EK.
        AttesterError: on transport errors.
    """
    with tpm.endorsement_policy_session(endorsement_auth=endorsement_auth) as session:
        return tpm.activate_credential(
            identity.ak_handle,
            identity.ek_handle,
            id_object,
            encrypted_secret,
            key_session=session,
        )


def store_report_in_nv(tpm: Tpm, report: bytes, index: int = NV_INDEX_RSA2048_EK_CERT) -> None:
    """Store a blob (the SVSM-vTPM prototype's VMPL0 SNP report) in an NV index.

    The index is (re)defined with the exact size of ``report``, readable with owner
    authorisation or its own empty auth value, and written in full.

    Args:
        tpm: a started TPM.
        report: the bytes to store (1184 for an SNP attestation report).
        index: the NV index, 0x01C00002 (the RSA-2048 EK certificate index) by default.

    Raises:
        TpmCommandError: if the TPM refuses.
        AttesterError: on transport errors.
    """
    try:
        tpm.nv_undefine(index)
    except TpmCommandError as exc:
        if exc.code.base != 0x08B:  # TPM_RC_HANDLE: nothing defined there yet
            raise
    tpm.nv_define(
        index,
        len(report),
        TpmaNv.OWNERWRITE | TpmaNv.AUTHWRITE | TpmaNv.OWNERREAD | TpmaNv.AUTHREAD | TpmaNv.NO_DA,
    )
    tpm.nv_write(index, report)
