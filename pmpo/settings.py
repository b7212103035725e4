"""What every settings block shares: one strict pydantic base and the field types two blocks have in common.

Each block is declared once, next to the step it configures (pmpo.models.settings, pmpo.scoring.settings,
pmpo.rewriting.settings, pmpo.loop.settings), and used unchanged by the library, the flows' parameters (Prefect
renders a nested model as its run form), config files and the CLI. A field's `description` states its meaning;
`describe` adds its constraint and default, for the docs' reference and the CLI help.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class Strict(BaseModel):
    """A settings block: unknown keys are errors, values never change, a boolean is never read as a number."""

    # extra="forbid": a typo in a config file must not silently run the defaults. frozen: settings are cache-key
    # material and dict keys (one model, scorer, client per settings), so they must not change after use.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `true` as 1 for a number field: `iterations: true` would run one iteration.
        if (
            isinstance(value, bool)
            and info.field_name
            and not _takes_bool(cls.model_fields[info.field_name].annotation)
        ):
            raise ValueError(f"expected a number, not the boolean {str(value).lower()}")
        return value


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or annotation is Any or bool in get_args(annotation)


def _variable_name(name: str | None) -> str | None:
    # A key pasted here instead of a variable's name would land in every record of the run (params, cache keys).
    if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError("takes the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key")
    return name


# --- fields an OpenAI-compatible server's settings share (the scored model's `model:` and the `rewriter:`) ---

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]

ApiKeyEnv = Annotated[
    str | None,
    AfterValidator(_variable_name),
    Field(description="openai: the environment variable holding the API key, never the key (None: no key)"),
]
# 60 s: a batch of long prompts on a busy CPU server, or a rewrite of a few hundred tokens; timeouts are retried.
TIMEOUT_S = 60.0
TimeoutS = Annotated[float, Field(gt=0, description="openai: seconds to wait for one reply before a retry")]
# 3 retries with exponential backoff ride out a restart or a rate-limit burst without hiding a dead server long.
MAX_RETRIES = 3
MaxRetries = Annotated[
    int, Field(ge=0, description="openai: retries of connection errors, timeouts, 429 and 5xx, with backoff")
]


def describe(model: type[BaseModel], name: str) -> str:
    """A field's description with its constraint and default, e.g. `hard examples per iteration (>= 1; default 3)`."""
    info = model.model_fields[name]
    bounds = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}
    limits = [f"{bounds[type(m)][0]} {getattr(m, bounds[type(m)][1])}" for m in info.metadata if type(m) in bounds]
    choices = _choices(info.annotation)
    if choices:
        limits.append(" | ".join(str(c) for c in choices))
    default = info.get_default(call_default_factory=False)
    if not isinstance(default, BaseModel) and info.default_factory is None:
        limits.append(f"default {_shown(default)}")
    text = info.description or name
    return f"{text} ({'; '.join(limits)})" if limits else text


def choices(model: type[BaseModel], name: str) -> list[Any]:
    """The values a Literal field takes, in declared order ([] for any other field)."""
    return _choices(model.model_fields[name].annotation)


def _choices(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    literal = [a for a in get_args(annotation) if get_origin(a) is Literal]
    return list(get_args(literal[0])) if literal else []


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
