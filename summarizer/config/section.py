"""The base of every configuration section: strict keys, validated on assignment and copy."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One table of the TOML file (``[model]``, ``[train]``, ...), and the object the code
    that the table configures takes as it is."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some fields changed (``model_copy`` does not validate)."""
        return type(self).model_validate({**self.model_dump(), **changes})
