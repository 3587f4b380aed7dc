"""The base of every configuration section: strict keys, validated on assignment and copy."""

from __future__ import annotations

import types
import typing
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _allows_bool(annotation: Any) -> bool:
    """Whether a field's type takes a boolean as itself (bool, or a union or a Literal with
    one), not as a number."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_allows_bool(a) for a in typing.get_args(annotation))
    return False


class Section(BaseModel):
    """One table of the TOML file (``[model]``, ``[train]``, ...), and the object the code
    that the table configures takes as it is."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1 for an int or float field: `num_seeds = true`
        # is a mistake to name, not a model with one seed.
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and not _allows_bool(field.annotation):
                raise ValueError(f"got the boolean {value!r}, but this field is not a flag")
        return value

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (``model_copy`` does not validate)."""
        return type(self).model_validate({**self.model_dump(), **changes})
