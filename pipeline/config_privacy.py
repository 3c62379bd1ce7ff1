"""The ``privacy`` section of tailsift's config: PII protection of kept traces before egress.

Secrets never live here: the config names where the token keys come from (an environment
variable or a key file) and which key id is active; ``pipeline.privacy`` loads them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from operators.privacy import DEFAULT_DETECTOR_ACTIONS
from operators.privacy.tokenizer import KEY_ID_PATTERN
from pipeline.config_base import Strict, require_unique_names

DetectorAction = Literal["tokenize", "redact", "hash", "drop"]
RuleAction = Literal["keep", "tokenize", "hash", "redact", "drop", "url", "sql"]


class KeysConfig(Strict):
    env: str = Field(
        "TAILSIFT_TOKEN_KEYS",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description='environment variable holding "id:secret,id:secret" (secret: hex or base64, >= 16 bytes)',
    )
    file: str | None = Field(
        None, min_length=1, description="key file (one id:secret a line); when set, used instead of env"
    )
    active: str | None = Field(
        None,
        pattern=rf"^{KEY_ID_PATTERN}$",
        description="id of the key new tokens are made with; may be omitted when there is one key",
    )


class DetectorConfig(Strict):
    enabled: bool = True
    action: DetectorAction


def _det(name: str) -> DetectorConfig:
    return DetectorConfig(action=DEFAULT_DETECTOR_ACTIONS[name])


class DetectorsConfig(Strict):
    email: DetectorConfig = _det("email")
    card: DetectorConfig = _det("card")
    ssn: DetectorConfig = _det("ssn")
    phone: DetectorConfig = _det("phone")
    ipv4: DetectorConfig = _det("ipv4")
    ipv6: DetectorConfig = _det("ipv6")
    jwt: DetectorConfig = _det("jwt")
    bearer: DetectorConfig = _det("bearer")
    api_key: DetectorConfig = _det("api_key")
    user_id: DetectorConfig = _det("user_id")

    def actions(self) -> dict[str, str]:
        """Enabled detectors → action."""
        return {name: getattr(self, name).action for name in type(self).model_fields if getattr(self, name).enabled}


class RuleConfig(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    keys: list[str] = Field(default_factory=list, description="glob patterns of attribute keys (fnmatch)")
    key_regex: str | None = Field(None, min_length=1, description="a regular expression the whole key must match")
    action: RuleAction
    scan: bool = Field(True, description="run the detectors over what keep/url/sql leave")

    @field_validator("key_regex")
    @classmethod
    def _compiles(cls, rx: str | None) -> str | None:
        if rx is not None:
            try:
                re.compile(rx)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return rx

    @model_validator(mode="after")
    def _has_keys(self) -> RuleConfig:
        if not self.keys and not self.key_regex:
            raise ValueError("a rule needs keys (globs) or key_regex")
        return self


_DEFAULT_KEEP_PARAMS = [
    "limit",
    "offset",
    "page",
    "per_page",
    "sort",
    "order",
    "fields",
    "currency",
    "lang",
    "locale",
    "format",
    "ref",
    "context",
    "zone",
    "origin",
    "v",
    "version",
]


class UrlConfig(Strict):
    query_values: Literal["tokenize", "strip", "redact", "drop"] = Field(
        "tokenize", description="what happens to query parameter values (drop removes the whole query)"
    )
    keep_params: list[str] = Field(
        default_factory=lambda: list(_DEFAULT_KEEP_PARAMS),
        description="parameters whose values are kept (detectors still run)",
    )


class TokenConfig(Strict):
    digest_bytes: int = Field(16, ge=8, le=32, description="HMAC-SHA256 bytes kept in a token (16 → 32 hex chars)")
    email_format: bool = Field(
        False,
        description="opt-in: e-mail tokens keep the domain (tok:k1:<digest>@example.com) when it is a well-formed"
        " hostname; off, the whole address is tokenized (a personal or small company domain identifies a person)",
    )


class PrivacyConfig(Strict):
    # On by default: PII must not leave untokenized unless an operator turns protection off.
    enabled: bool = Field(True, description="protect kept traces (and logs) before they leave the job")
    mode: Literal["denylist", "allowlist"] = Field(
        "denylist",
        description="allowlist: attributes whose key matches no allowed_keys pattern are removed (fail closed)",
    )
    allowed_keys: list[str] = Field(
        default_factory=list, description="allowlist mode: glob patterns of keys that may leave"
    )
    unknown_keys: Literal["drop", "redact"] = Field("drop", description="allowlist mode: what happens to other keys")
    default_rules: bool = Field(True, description="append the built-in semantic-convention rules after `rules`")
    rules: list[RuleConfig] = Field(default_factory=list, description="first matching rule wins")
    detectors: DetectorsConfig = DetectorsConfig()
    url: UrlConfig = UrlConfig()
    token: TokenConfig = TokenConfig()
    keys: KeysConfig = KeysConfig()
    sanitize_span_names: bool = Field(True, description='"GET /users/123" → "GET /users/{id}"')
    audit: bool = Field(True, description="per kept trace, counts of what fired → topics.pii_audit")

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        return require_unique_names(rules, "rule")

    @model_validator(mode="after")
    def _allowlist_has_keys(self) -> PrivacyConfig:
        if self.mode == "allowlist" and not self.allowed_keys:
            raise ValueError("mode allowlist needs allowed_keys (otherwise every attribute is removed)")
        return self
