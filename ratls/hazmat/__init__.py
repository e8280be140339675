"""Low-level building blocks: raw parsers and signature checks with no policy.

.. danger::
   These modules are the "hazardous materials" layer, in the sense of pyca/cryptography's
   ``hazmat``.  A parsed report or a verified signature is not an attestation: it does not
   check freshness, binding, the root of trust or any policy.  Use the top-level recipes
   (``ratls.verify_snp_attestation``) unless you are building one.
"""

from __future__ import annotations
