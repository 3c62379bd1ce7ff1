"""Keyed tokens: determinism across processes, rotation, key ids, key loading."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators.privacy import KeyRing, KeyRingError, Tokenizer
from pipeline.config_privacy import KeysConfig, PrivacyConfig
from pipeline.privacy import PrivacyKeyError, load_key_ring, parse_keys

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
ROOT = Path(__file__).resolve().parents[2]


def test_token_shape_and_determinism():
    t = Tokenizer(KeyRing({"k1": K1}))
    a = t.token("jane.doe@example.com")
    assert a == t.token("jane.doe@example.com") == Tokenizer(KeyRing({"k1": K1})).token("jane.doe@example.com")
    assert a.startswith("tok:k1:") and len(a) == len("tok:k1:") + 32
    assert a != t.token("jane.doe@example.org")
    assert Tokenizer.key_id_of(a) == "k1"
    assert t.token(b"raw") == t.token("raw")


def test_email_token_keeps_domain_and_shares_the_digest():
    t = Tokenizer(KeyRing({"k1": K1}))
    e = t.email_token("jane.doe@example.com")
    assert e == t.token("jane.doe@example.com") + "@example.com"
    assert "jane" not in e
    assert Tokenizer.key_id_of(e) == "k1"
    assert t.email_token("not-an-email") == t.token("not-an-email")


def test_rotation_changes_tokens_and_key_id_old_tokens_stay_recognisable():
    ring = KeyRing({"k1": K1, "k2": K2}, active="k1")
    old = Tokenizer(ring).token("u-12345")
    new = Tokenizer(ring.with_active("k2")).token("u-12345")
    assert old != new
    assert Tokenizer.key_id_of(old) == "k1" and Tokenizer.key_id_of(new) == "k2"
    assert old.split(":")[2] != new.split(":")[2]
    # the old key still reproduces old tokens (for lookups during the overlap)
    assert Tokenizer(ring).token("u-12345") == old


def test_hash_is_keyed_full_width():
    t = Tokenizer(KeyRing({"k1": K1}))
    h = t.hash("x")
    assert h.startswith("hash:k1:") and len(h.split(":")[2]) == 64
    assert h != Tokenizer(KeyRing({"k1": K2})).hash("x")
    assert Tokenizer.key_id_of(h) == "k1"


@pytest.mark.parametrize(
    "keys,active,msg",
    [
        ({}, None, "empty"),
        ({"k1": b"short"}, None, "shorter"),
        ({"k1": K1, "k2": K2}, None, "active"),
        ({"k1": K1}, "k9", "not in the ring"),
        ({"bad id!": K1}, None, "must match"),
    ],
)
def test_bad_rings(keys, active, msg):
    with pytest.raises(KeyRingError, match=msg):
        KeyRing(keys, active)


def test_ring_repr_hides_keys():
    assert K1.hex() not in repr(KeyRing({"k1": K1}))


def test_parse_keys_hex_and_base64():
    import base64

    keys = parse_keys(f"k1:{K1.hex()}, k2:{base64.b64encode(K2).decode()}\n# comment\n", "test")
    assert keys == {"k1": K1, "k2": K2}
    with pytest.raises(PrivacyKeyError, match="twice"):
        parse_keys(f"k1:{K1.hex()},k1:{K1.hex()}", "test")
    with pytest.raises(PrivacyKeyError, match="id:secret"):
        parse_keys("justsecret", "test")


def test_load_key_ring_from_env_and_file(tmp_path):
    cfg = PrivacyConfig(enabled=True, keys=KeysConfig(env="MY_KEYS", active="k2"))
    ring = load_key_ring(cfg, {"MY_KEYS": f"k1:{K1.hex()},k2:{K2.hex()}"})
    assert ring.active == "k2"
    with pytest.raises(PrivacyKeyError, match="MY_KEYS") as exc:
        load_key_ring(cfg, {})
    assert "openssl" in str(exc.value)
    f = tmp_path / "keys"
    f.write_text(f"k1:{K1.hex()}\n")
    f.chmod(0o600)
    ring = load_key_ring(PrivacyConfig(enabled=True, keys=KeysConfig(file=str(f))), {})
    assert ring.ids == ["k1"] and ring.active == "k1"
    with pytest.raises(PrivacyKeyError, match="key file"):
        load_key_ring(PrivacyConfig(enabled=True, keys=KeysConfig(file=str(tmp_path / "missing"))), {})
    # errors never echo a secret
    with pytest.raises(PrivacyKeyError) as exc:
        load_key_ring(
            PrivacyConfig(enabled=True, keys=KeysConfig(env="MY_KEYS", active="k9")), {"MY_KEYS": f"k1:{K1.hex()}"}
        )
    assert K1.hex() not in str(exc.value)


def test_same_key_same_token_in_two_processes():
    code = (
        "import sys; from pipeline.config_privacy import PrivacyConfig; from pipeline.privacy import build_protector;"
        "p = build_protector(PrivacyConfig(enabled=True)); print(p.tokenizer.token(sys.argv[1]))"
    )
    env = {**os.environ, "TAILSIFT_TOKEN_KEYS": f"k1:{K1.hex()}"}
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, "u-4242"], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert outs == {Tokenizer(KeyRing({"k1": K1})).token("u-4242")}
