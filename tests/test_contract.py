"""The operator/trainer contract module must stay import-free and self-consistent."""

import ast
import pathlib

from finetune_trainer import contract

CONTRACT_FILE = pathlib.Path(contract.__file__)


def test_contract_module_imports_nothing() -> None:
    tree = ast.parse(CONTRACT_FILE.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports == [], "contract.py must stay zero-import"


def test_env_names_follow_torchrun_convention() -> None:
    pet = [contract.ENV_NNODES, contract.ENV_NPROC_PER_NODE, contract.ENV_NODE_RANK,
           contract.ENV_MASTER_ADDR, contract.ENV_MASTER_PORT]
    assert all(name.startswith("PET_") for name in pet)
    assert len(set(pet)) == len(pet)


def test_constant_names_are_unique_values_per_family() -> None:
    envs = {k: v for k, v in vars(contract).items() if k.startswith("ENV_")}
    assert len(set(envs.values())) == len(envs), "two ENV_ constants share a value"
    labels = {k: v for k, v in vars(contract).items() if k.startswith("LABEL_")}
    assert len(set(labels.values())) == len(labels)
