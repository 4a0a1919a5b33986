"""RFC 8460 (TLS-RPT) vocabulary: the 4.3 result types and 4.4 policy types.

Pure names, so the TLS verdicts (:mod:`tlsmta.tls._policy`) can say which
result a session had without loading the report store.
"""

STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"
RESULT_TYPES = frozenset({
    STARTTLS_NOT_SUPPORTED, CERTIFICATE_HOST_MISMATCH, CERTIFICATE_EXPIRED, CERTIFICATE_NOT_TRUSTED,
    VALIDATION_FAILURE, TLSA_INVALID, DNSSEC_INVALID, DANE_REQUIRED, STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID, STS_WEBPKI_INVALID,
})

POLICY_STS = "sts"
POLICY_TLSA = "tlsa"
POLICY_NONE = "no-policy-found"
POLICY_TYPES = frozenset({POLICY_STS, POLICY_TLSA, POLICY_NONE})
