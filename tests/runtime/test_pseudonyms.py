"""his.runtime.pseudonyms: keyed research pseudonyms and where their key comes from."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import stat
import uuid
from pathlib import Path

import pytest

from his.base.env import ConfigError
from his.runtime.config import load
from his.runtime.pseudonyms import Pseudonyms, ResearchConfig, pseudonym


def _key() -> bytes:
    return secrets.token_bytes(32)


def test_a_pseudonym_is_the_truncated_base32_hmac_of_the_resource_name() -> None:
    key = _key()
    patient_id = uuid.uuid4()

    made = Pseudonyms(key).patient(patient_id)

    digest = hmac.new(key, f"patients/{patient_id}".encode(), hashlib.sha256).digest()
    assert made == base64.b32encode(digest).decode().lower()[:20]
    assert made == pseudonym(key, f"patients/{patient_id}")
    assert str(patient_id) not in made


def test_the_same_key_gives_the_same_pseudonym_and_another_key_another() -> None:
    key = _key()
    patient_id = uuid.uuid4()

    first = Pseudonyms(key)
    again = Pseudonyms(bytes(key))
    other = Pseudonyms(_key())

    assert first.patient(patient_id) == again.patient(str(patient_id))
    assert first.key_id == again.key_id
    assert other.patient(patient_id) != first.patient(patient_id)
    assert other.key_id != first.key_id
    assert first.patient(uuid.uuid4()) != first.patient(patient_id)


def test_the_key_id_and_repr_do_not_reveal_the_key() -> None:
    key = _key()
    pseudonyms = Pseudonyms(key)

    assert len(pseudonyms.key_id) == 16
    for text in (pseudonyms.key_id, repr(pseudonyms)):
        assert key.hex()[:16] not in text
        assert base64.b64encode(key).decode()[:16] not in text


def test_the_key_comes_from_the_environment() -> None:
    key = _key()

    config = ResearchConfig.from_env({"HIS_RESEARCH_PSEUDONYM_KEY": base64.b64encode(key).decode()})

    assert config.pseudonym_key == key
    assert config.dev_key_file is None
    assert Pseudonyms.from_config(config).key_id == Pseudonyms(key).key_id
    assert key.hex() not in repr(config)


@pytest.mark.parametrize(
    ("raw", "message"),
    [("not base64 at all!", "is not base64"), (base64.b64encode(b"short").decode(), "32 bytes")],
)
def test_a_bad_key_names_the_variable_never_the_value(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failure:
        ResearchConfig.from_env({"HIS_RESEARCH_PSEUDONYM_KEY": raw})

    assert "HIS_RESEARCH_PSEUDONYM_KEY" in str(failure.value)
    assert raw not in str(failure.value)


def test_in_the_mesh_a_missing_key_is_an_error_of_the_services_that_export() -> None:
    config = ResearchConfig.from_env({"HIS_MESH": "istio"})

    with pytest.raises(ConfigError, match="HIS_RESEARCH_PSEUDONYM_KEY is required"):
        Pseudonyms.from_config(config)


def test_service_config_carries_the_research_key(tmp_path: Path) -> None:
    key = _key()

    configured = load("patient", {"HIS_RESEARCH_PSEUDONYM_KEY": base64.b64encode(key).decode()})
    local = load("scheduling", {"HIS_DATA_DIR": str(tmp_path)})

    assert configured.research.pseudonym_key == key
    assert local.research.dev_key_file == tmp_path / "secrets" / "research.json"


def test_a_local_key_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    config = ResearchConfig.from_env({"HIS_DATA_DIR": str(tmp_path)})
    path = tmp_path / "secrets" / "research.json"
    assert config.dev_key_file == path

    first = Pseudonyms.from_config(config)
    again = Pseudonyms.from_config(ResearchConfig.from_env({"HIS_DATA_DIR": str(tmp_path)}))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"pseudonym_key", "create_time"}
    assert again.key_id == first.key_id
    assert [p.name for p in path.parent.iterdir()] == ["research.json"]  # no temporary left


async def test_services_starting_together_agree_on_one_local_key(tmp_path: Path) -> None:
    config = ResearchConfig.from_env({"HIS_DATA_DIR": str(tmp_path)})

    made = await asyncio.gather(
        *(asyncio.to_thread(Pseudonyms.from_config, config) for _ in range(8))
    )

    assert len({pseudonyms.key_id for pseudonyms in made}) == 1
