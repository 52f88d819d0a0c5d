"""Error codes and the exceptions that carry them: one table for validation, workers and CLI.

The provider's codes (``001021xxx``) are used verbatim wherever the provider would give them,
so a job refused locally carries the same code the API would have returned. Checks the
provider's document names without a code get wanq's own codes, prefixed ``WQ`` so they can
never be mistaken for the provider's.

    WanqError                 the root: every error wanq raises on purpose
    ├── CodedError            refused or given up on, with a code from the table below
    │   ├── ValidationError   a request or batch line breaks the contract (nothing enqueued)
    │   ├── JobFailure        a job ends failed: a run code (001021095-099) plus remote detail
    │   ├── SubmissionRefused a batch file was refused whole (invalid, empty, changed lines)
    │   ├── BatchNotFound     no batch has this ID (also a KeyError, as it used to be)
    │   └── ConfigError       a WANQ_ setting is not accepted (also a ValueError)
    ├── ProviderError         an answer of the provider that is not a usable result
    │   ├── Transient         (workers.provider) retry with backoff
    │   ├── AccountProblem    (workers.provider) 401/403: the account, not the job
    │   └── Rejected          (workers.provider) other 4xx: permanent for the job
    ├── ArchiveError          (workers.archive) an output could not be saved
    └── StackError            (ops.localstack) a local process would not start or stop
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- the provider's request codes (contract.md) ---------------------------------------------
MISSING_INPUT = "001021001"
MESSAGES_NOT_ONE = "001021002"
ROLE_NOT_USER = "001021003"
CONTENT_NOT_ARRAY = "001021004"
CONTENT_TEXT_NOT_ONE = "001021005"
TEXT_LENGTH = "001021006"
INTERLEAVE_IMAGES = "001021007"
EDIT_IMAGES = "001021008"
NEGATIVE_PROMPT_LENGTH = "001021009"
INTERLEAVE_N = "001021010"
N_RANGE = "001021011"
MAX_IMAGES_MODE = "001021012"
MAX_IMAGES_RANGE = "001021013"
SEED_RANGE = "001021014"
SIZE_FORMAT = "001021015"
SIZE_PIXELS = "001021016"
SIZE_ASPECT = "001021017"
SIZE_INTEGERS = "001021018"

# --- the provider's run codes: why a job failed after it was accepted -----------------------
GENERATION_ERROR = "001021095"
RESULT_PARSING = "001021096"
HTTP_ERROR = "001021097"
STATUS_CHECK = "001021098"
TASK_CREATION = "001021099"
# A job that failed with one of these while its remote task is known stopped following a task
# that may run on and be billed: the sweeper follows it for its cost (workers.abandoned).
STOPPED_FOLLOWING = (STATUS_CHECK, RESULT_PARSING)

# --- wanq's own codes: checks the seed names without a code ---------------------------------
MODEL = "WQ001"
BODY_TYPE = "WQ002"
FIELD_TYPE = "WQ003"
TEXT_ENCODING = "WQ004"
IMAGE_REFERENCE = "WQ010"
IMAGE_FORMAT = "WQ011"
IMAGE_TRANSPARENCY = "WQ012"
IMAGE_DIMENSIONS = "WQ013"
IMAGE_BYTES = "WQ014"
IMAGE_DECODE = "WQ015"
IMAGE_PROBE = "WQ016"
LINE_JSON = "WQ100"
LINE_SHAPE = "WQ101"
CUSTOM_ID = "WQ102"
CUSTOM_ID_DUPLICATE = "WQ103"
LINE_TOO_LONG = "WQ104"
LINE_CSV = "WQ105"
BATCH_TOO_LARGE = "WQ106"
BATCH_EMPTY = "WQ107"
CUSTOM_ID_CHANGED = "WQ108"
BATCH_INVALID = "WQ109"
NO_ROOM = "WQ110"
CANCELLED = "WQ200"
BATCH_NOT_FOUND = "WQ300"
CONFIG = "WQ301"
REDIS_UNREACHABLE = "WQ302"

MESSAGES: dict[str, str] = {
    MISSING_INPUT: "Missing required field input",
    MESSAGES_NOT_ONE: "input.messages must contain one message",
    ROLE_NOT_USER: "message.role must be user",
    CONTENT_NOT_ARRAY: "message.content must be array",
    CONTENT_TEXT_NOT_ONE: "message.content must contain one text object",
    TEXT_LENGTH: "Text length must be between 1-2000 characters",
    INTERLEAVE_IMAGES: "When enable_interleave=true, can only input 0-1 images",
    EDIT_IMAGES: "When enable_interleave=false, must input 1-4 images",
    NEGATIVE_PROMPT_LENGTH: "negative_prompt cannot exceed 500 characters",
    INTERLEAVE_N: "When enable_interleave=true, n must be 1",
    N_RANGE: "n must be an integer between 1 and 4",
    MAX_IMAGES_MODE: "max_images is only valid when enable_interleave=true",
    MAX_IMAGES_RANGE: "max_images must be an integer between 1 and 5",
    SEED_RANGE: "seed must be an integer between 0 and 2147483647",
    SIZE_FORMAT: "size format must be 'width*height'",
    SIZE_PIXELS: "size must be between 768*768 and 1280*1280 pixels",
    SIZE_ASPECT: "Aspect ratio must be between 1:4 and 4:1",
    SIZE_INTEGERS: "Invalid size format, must be 'width*height' with integers",
    GENERATION_ERROR: "Internal generation error",
    RESULT_PARSING: "Result parsing error",
    HTTP_ERROR: "HTTP error response",
    STATUS_CHECK: "Status check error",
    TASK_CREATION: "Task creation error",
    MODEL: "model must be 'wan26_i2i'",
    BODY_TYPE: "request body must be a JSON object",
    FIELD_TYPE: "field has the wrong JSON type",
    TEXT_ENCODING: "text must be valid Unicode (a lone surrogate cannot be stored as UTF-8)",
    IMAGE_REFERENCE: "image must be an http(s) URL, a data URI or an existing local file",
    IMAGE_FORMAT: "image format must be JPEG, PNG, BMP or WEBP",
    IMAGE_TRANSPARENCY: "images must not have transparency",
    IMAGE_DIMENSIONS: "image width and height must be between 384 and 5000 pixels",
    IMAGE_BYTES: "image must be at most 10 MB",
    IMAGE_DECODE: "image data cannot be decoded",
    IMAGE_PROBE: "image URL is not reachable",
    LINE_JSON: "line is not valid JSON",
    LINE_SHAPE: "line must be an object with 'custom_id' and 'body'",
    CUSTOM_ID: "custom_id must be a string of 1-64 characters",
    CUSTOM_ID_DUPLICATE: "custom_id is repeated in this batch",
    LINE_TOO_LONG: "line is longer than the batch line limit",
    LINE_CSV: "CSV record cannot be read",
    BATCH_TOO_LARGE: "batch file has too many lines",
    BATCH_EMPTY: "batch has no valid line: nothing would run",
    CUSTOM_ID_CHANGED: "custom_id is already in this batch with a different request",
    BATCH_INVALID: "batch file has invalid lines: nothing submitted",
    NO_ROOM: "the batch does not fit in Redis memory; nothing was enqueued",
    CANCELLED: "job was cancelled",
    BATCH_NOT_FOUND: "no such batch",
    CONFIG: "setting not accepted",
    REDIS_UNREACHABLE: "cannot reach Redis",
}


def message_for(code: str) -> str:
    return MESSAGES.get(code, "unknown error")


class WanqError(Exception):
    """The root of wanq's own errors: ``except WanqError`` catches all that wanq raises on
    purpose and nothing that is a bug."""


@dataclass
class CodedError(WanqError):
    """An error with a code from the table; ``detail`` narrows the table's message."""

    code: str
    detail: str = ""
    field: str | None = None

    @property
    def message(self) -> str:
        base = message_for(self.code)
        return f"{base}: {self.detail}" if self.detail else base

    def __str__(self) -> str:
        where = f" (at {self.field})" if self.field else ""
        return f"[{self.code}] {self.message}{where}"


@dataclass
class ValidationError(CodedError):
    """A request or batch line breaks the contract; nothing is enqueued for it."""


@dataclass
class JobFailure(CodedError):
    """A job ends failed. ``remote`` keeps the provider's own error verbatim when it gave one."""

    remote: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.remote:
            record["remote"] = self.remote
        return record


@dataclass
class SubmissionRefused(CodedError):
    """A batch file refused whole: nothing was enqueued. ``report`` (a SubmitReport) lists the
    lines that caused it, so a program sees the same per-line codes the CLI prints."""

    report: Any = None


@dataclass
class BatchNotFound(CodedError, KeyError):
    """No batch has this ID. A KeyError too, so callers written against the old KeyError
    keep working."""

    code: str = BATCH_NOT_FOUND

    def __str__(self) -> str:
        return f"no batch {self.detail!r}"


@dataclass
class ConfigError(CodedError, ValueError):
    """A ``WANQ_`` setting is refused when loaded; ``detail`` is one plain line naming the
    variable and what it accepts. A ValueError too, as config errors used to be."""

    code: str = CONFIG

    def __str__(self) -> str:
        return self.detail
