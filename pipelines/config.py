"""Typed, validated access to ``params.yaml``.

Each stage declares a pydantic model for its own section and reads only that section (plus
``base``). Unknown keys, wrong types and missing files fail with a message that names the file,
the section and the key, never a bare traceback.

Example:
    >>> class PairParams(StageParams):
    ...     seed: int = 0
    >>> load_section(PairParams, "pair")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.errors import ConfigError

PARAMS_FILE = Path("params.yaml")


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, values are validated."""

    # Python code may pass a field by name (`size=`); params.yaml goes by alias (`image_size`)
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True
    )


class BaseParams(StageParams):
    """The ``base`` section shared by every stage."""

    seed: int = 1337


T = TypeVar("T", bound=StageParams)


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read a params YAML file into a dict.

    Raises:
        ConfigError: the file is missing, is not UTF-8 text or YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte offset "
            f"{exc.start}); re-save the file as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


#: Keys DVC's run cache drops from a stage's hash at any depth (treeverse/dvc#10296): a param
#: named like this could change without its stage rerunning, so params.yaml never uses them.
RUN_CACHE_BLIND_KEYS: tuple[str, ...] = ("size", "nfiles")


def parse_section(cls: type[T], name: str, params: dict[str, Any], source: str = "params") -> T:
    """Validate ``params[name]`` against ``cls``.

    Raises:
        ConfigError: naming the source, the section and the offending key.
    """
    raw = params.get(name) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping")
    blind = sorted(set(raw) & set(RUN_CACHE_BLIND_KEYS))
    if blind:
        key = blind[0]
        raise ConfigError(
            f"{source}: {name}.{key}: a param may not be named '{key}' (DVC's run cache leaves "
            f"such keys out of the stage hash and would reuse stale outputs, treeverse/dvc#10296)"
            + (f"; use {name}.image_size" if key == "size" else "")
        )
    try:
        # by alias only: a params file says `image_size`, Python code may say `size=`
        return cls.model_validate(raw, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def load_section(cls: type[T], name: str, path: str | Path = PARAMS_FILE) -> T:
    """Load and validate one section of a params file."""
    return parse_section(cls, name, load_params(path), source=str(path))


def load_base(path: str | Path = PARAMS_FILE) -> BaseParams:
    """Load the shared ``base`` section."""
    return load_section(BaseParams, "base", path)
