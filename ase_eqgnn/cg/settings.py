"""A mixin for the back-mapping settings dataclasses (model hyper-parameters, loss weights).

``from_dict`` rejects keys the dataclass does not have, naming them and the valid ones, so a typo in
a YAML config is an error rather than a silently ignored setting; ``to_dict`` is the JSON-able inverse.

Example
-------
>>> from dataclasses import dataclass
>>> @dataclass
... class Weights(Settings):
...     beta: float = 1.0
>>> Weights.from_dict({"beta": 2.0}).to_dict()
{'beta': 2.0}
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import ClassVar, Dict


class Settings:
    """Strict dict round trip for a dataclass; ``what`` names it in error messages."""

    what: ClassVar[str] = "settings"

    @classmethod
    def from_dict(cls, data: Dict):
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.what} keys: {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**data)

    def to_dict(self) -> Dict:
        return asdict(self)
