"""Privacy operators: keyed tokens, PII detectors, rules per attribute key, URL/SQL sanitizers,
audit counts. Pure and synchronous: keys are injected, nothing here reads the environment or files,
nothing touches Kafka.

    ring = KeyRing({"k1": key_bytes}, active="k1")
    protector = Protector(Tokenizer(ring), Scanner(Tokenizer(ring), {"email": "tokenize", ...}))
    counts = {}
    protector.protect_span(decoded_span, counts)   # counts: {"rule:user-id": 2, "detector:email": 1}
"""

from operators.privacy.detectors import DETECTOR_NAMES, DETECTORS, Detector, DropValue, Scanner, redaction
from operators.privacy.luhn import luhn_check_digit, luhn_valid
from operators.privacy.rules import DEFAULT_RULES, REDACTED, RULE_ACTIONS, Protector, Rule, UrlPolicy
from operators.privacy.sanitize import (
    is_id_segment,
    sanitize_path,
    sanitize_query,
    sanitize_span_name,
    sanitize_sql,
    sanitize_statement,
    sanitize_url,
)
from operators.privacy.tokenizer import HASH_RE, TOKEN_RE, KeyRing, KeyRingError, Tokenizer

# Default action per detector: identifiers people correlate on are tokenized; secrets and
# numbers nobody should correlate on (cards, national ids) are redacted.
DEFAULT_DETECTOR_ACTIONS = {
    "jwt": "redact",
    "bearer": "redact",
    "api_key": "redact",
    "email": "tokenize",
    "card": "redact",
    "ssn": "redact",
    "ipv4": "tokenize",
    "ipv6": "tokenize",
    "phone": "tokenize",
    "user_id": "tokenize",
}

__all__ = [
    "DEFAULT_DETECTOR_ACTIONS",
    "DEFAULT_RULES",
    "DETECTORS",
    "DETECTOR_NAMES",
    "HASH_RE",
    "REDACTED",
    "RULE_ACTIONS",
    "TOKEN_RE",
    "Detector",
    "DropValue",
    "KeyRing",
    "KeyRingError",
    "Protector",
    "Rule",
    "Scanner",
    "Tokenizer",
    "UrlPolicy",
    "is_id_segment",
    "luhn_check_digit",
    "luhn_valid",
    "redaction",
    "sanitize_path",
    "sanitize_query",
    "sanitize_span_name",
    "sanitize_sql",
    "sanitize_statement",
    "sanitize_url",
]
