"""The allow-listed environment for workspace commands, and redaction of secrets from log text."""

import json
import os
import subprocess
import sys
import time

import pytest

from autoresearch.secrets import SECRET_NAME, redact, run_environment, secret_values

OPENAI = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
ANTHROPIC = "sk-ant-api03-" + "Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe-dC_bA"
HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"
SECRETS = {
    "OPENAI_API_KEY": OPENAI, "ANTHROPIC_API_KEY": ANTHROPIC, "HF_TOKEN": HF, "GITHUB_TOKEN": "gho_" + "x" * 36,
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEBa" * 3,
    "AUTORESEARCH_API_KEY": "autoresearch-secret-1", "TORCH_TOKEN": "torch-secret-12345",
}
ORDINARY = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/me", "LC_ALL": "C.UTF-8", "AUTORESEARCH_SEED": "7",
    "CUDA_VISIBLE_DEVICES": "0,1", "PYTHONHASHSEED": "0", "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
}
SOURCE = {**ORDINARY, **SECRETS, "MY_APP_SETTING": "on", "LCX": "no"}

ORDINARY_LINES = """\
val_bpb: 1.456789
step 00120 | loss 3.21 | tokens/sec 12345
Traceback (most recent call last):
  File "/home/me/project/train.py", line 42, in <module>
    model = build(config)
KeyError: 'x'
tokenizer: 1024 tokens
num_tokens: 2048
num_tokens: 20480000
max_token: 12345678
token budget exhausted after 300.0 seconds
password reset is not a thing here
see https://example.com/a/b?c=d and C:\\Users\\me\\file.txt
task-scheduler started, disk-usage 12%, mask-fill-value 0.5
"""


def test_secret_names():
    for name in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "DB_PASSWORD", "my_passwd", "GOOGLE_APPLICATION_CREDENTIALS", "HTTP_AUTH",
                 "COOKIE_JAR", "SSH_PRIVATE"]:
        assert SECRET_NAME.search(name), name
    for name in ["PATH", "HOME", "AUTORESEARCH_SEED", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "LC_ALL"]:
        assert not SECRET_NAME.search(name), name


def test_run_environment_keeps_the_allow_list_and_drops_the_rest():
    env = run_environment(SOURCE)
    assert env == ORDINARY
    assert env is not SOURCE


def test_passthrough_passes_named_variables_even_secret_looking_ones():
    env = run_environment(SOURCE, passthrough=["MY_APP_SETTING", "HF_TOKEN", "NOT_SET_ANYWHERE"])
    assert env == {**ORDINARY, "MY_APP_SETTING": "on", "HF_TOKEN": HF}


def test_a_real_subprocess_sees_no_secret():
    source = {**os.environ, **SECRETS, "MY_APP_SETTING": "on"}
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    done = subprocess.run([sys.executable, "-c", code], env=run_environment(source), capture_output=True, text=True,
                          check=True)
    seen = json.loads(done.stdout)
    assert not set(SECRETS) & set(seen) and "MY_APP_SETTING" not in seen
    assert not [name for name in seen if SECRET_NAME.search(name)]
    assert not set(SECRETS.values()) & set(seen.values())
    assert seen["PATH"] == os.environ["PATH"]


def test_secret_values_are_long_enough_longest_first_and_unique():
    source = {"A_TOKEN": "short", "B_KEY": "12345678", "C_SECRET": "a-much-longer-value", "D_KEY": "12345678",
              "PATH": "/not/a/secret/but/long"}
    assert secret_values(source) == ["a-much-longer-value", "12345678"]


def test_crash_tail_with_three_keys_is_redacted():
    tail = ("step 00010 | loss 4.00\n"
            f"openai.AuthenticationError: Incorrect API key provided: {OPENAI}\n"
            f"fallback client = Anthropic(api_key_literal_was {ANTHROPIC})\n"
            f"downloading with {HF} failed\n"
            "Traceback (most recent call last):\n")
    out = redact(tail, {"OPENAI_API_KEY": OPENAI})
    assert OPENAI not in out and ANTHROPIC not in out and HF not in out
    assert out.count("[redacted]") == 3
    assert out.startswith("step 00010 | loss 4.00\n") and out.endswith("Traceback (most recent call last):\n")


def test_env_values_are_redacted_even_without_a_known_shape():
    value = "plain-looking-value-42"
    assert redact(f"connecting with {value} now", {"DB_PASSWORD": value}) == "connecting with [redacted] now"
    assert redact(f"connecting with {value} now", {"DB_HOST": value}) == f"connecting with {value} now"


def test_redact_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "zzz-environ-secret-zzz")
    assert redact("got zzz-environ-secret-zzz back") == "got [redacted] back"


@pytest.mark.parametrize("token", [
    OPENAI, ANTHROPIC, "sk-" + "a" * 16, HF,
    "ghp_" + "A1" * 18, "gho_" + "b" * 30, "ghu_" + "c" * 30, "ghs_" + "d" * 30, "ghr_" + "e" * 30,
    "github_pat_" + "11ABCDEFG_" + "h" * 40,
    "AKIA" + "IOSFODNN7EXAMPLE", "ASIA" + "Q3EGRZ7XIP4WZ2AB",
    "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxp-" + "1234567890-abcdef",
    "AIza" + "SyA-1234567890abcdefghijklmnopqrstu",
    "eyJhbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0" + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
])
def test_token_shapes_are_caught(token):
    assert redact(f"error: bad credential {token} (401)", {}) == "error: bad credential [redacted] (401)"


@pytest.mark.parametrize("line, expected", [
    ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer [redacted]"),
    ("header bearer abc.def-ghi_jkl~mno+pq/rs=", "header bearer [redacted]"),
    ("api_key=abcd1234efgh", "api_key=[redacted]"),
    ("OPENAI_API_KEY=whatever-it-is", "OPENAI_API_KEY=[redacted]"),
    ('{"password": "hunter2hunter2", "user": "me"}', '{"password": "[redacted]", "user": "me"}'),
    ("token: abcdefgh", "token: [redacted]"),
    ("Secret = 'correct-horse-battery'", "Secret = '[redacted]'"),
    ("API-KEY: ABCDEFGH12345", "API-KEY: [redacted]"),
    ("access_token=1234567890abcdef&x=1", "access_token=[redacted]"),
    ("Api_Key: MixedCase123", "Api_Key: [redacted]"),
    ("İstanbul token=abcdefgh12 ok", "İstanbul token=[redacted] ok"),
    (f"OPENAI_API_KEY={OPENAI}", "OPENAI_API_KEY=[redacted]"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r",
     "Authorization: Bearer [redacted]"),
    ("token: short", "token: short"),
    ("Bearer short", "Bearer short"),
])
def test_assignments_and_bearer_keep_the_name(line, expected):
    assert redact(line, {}) == expected


def test_pem_private_key_block_is_redacted():
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dV\n"
    for kind in ["PRIVATE KEY", "RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"]:
        text = f"before\n-----BEGIN {kind}-----\n{body}-----END {kind}-----\nafter\n"
        assert redact(text, {}) == "before\n[redacted]\nafter\n"
    cut = redact(f"before\n-----BEGIN PRIVATE KEY-----\n{body}", {})
    assert cut == "before\n[redacted]"
    public = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    assert redact(public, {}) == public


def test_ordinary_log_text_is_unchanged():
    assert redact(ORDINARY_LINES, {}) == ORDINARY_LINES
    assert redact(ORDINARY_LINES, {"HF_TOKEN": HF, "OPENAI_API_KEY": OPENAI}) == ORDINARY_LINES
    assert redact("", {}) == ""


def test_redacting_a_tail_is_fast():
    lines = ORDINARY_LINES.splitlines()
    tail = "\n".join(lines[i % len(lines)] + " " + "x" * 40 for i in range(50))
    tail = tail[:5000]
    source = {"OPENAI_API_KEY": OPENAI, "HF_TOKEN": HF}
    redact(tail, source)
    start = time.perf_counter()
    for _ in range(100):
        redact(tail, source)
    per_call = (time.perf_counter() - start) / 100
    assert per_call < 0.005, per_call  # about 0.1-0.5 ms here; generous bound for slow CI
