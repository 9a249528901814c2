from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_1: _ClassVar[ProtocolVersion]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_SIMPLE: _ClassVar[Aggregation]
    AGGREGATION_NONE: _ClassVar[Aggregation]
    AGGREGATION_FIRST: _ClassVar[Aggregation]
    AGGREGATION_AVERAGE: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Status]
    INVALID_ARGUMENT: _ClassVar[Status]
    OVERLOADED: _ClassVar[Status]
    DEADLINE_EXCEEDED: _ClassVar[Status]
    UNAVAILABLE: _ClassVar[Status]
    INTERNAL: _ClassVar[Status]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_1: ProtocolVersion
AGGREGATION_SIMPLE: Aggregation
AGGREGATION_NONE: Aggregation
AGGREGATION_FIRST: Aggregation
AGGREGATION_AVERAGE: Aggregation
AGGREGATION_MAX: Aggregation
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
OK: Status
INVALID_ARGUMENT: Status
OVERLOADED: Status
DEADLINE_EXCEEDED: Status
UNAVAILABLE: Status
INTERNAL: Status

class Request(_message.Message):
    __slots__ = ("version", "id", "classify", "info")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    version: int
    id: int
    classify: ClassifyRequest
    info: InfoRequest
    def __init__(self, version: _Optional[int] = ..., id: _Optional[int] = ..., classify: _Optional[_Union[ClassifyRequest, _Mapping]] = ..., info: _Optional[_Union[InfoRequest, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("inputs", "options", "deadline_us", "priority", "model")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_US_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    options: Options
    deadline_us: int
    priority: Priority
    model: str
    def __init__(self, inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., options: _Optional[_Union[Options, _Mapping]] = ..., deadline_us: _Optional[int] = ..., priority: _Optional[_Union[Priority, str]] = ..., model: _Optional[str] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("text", "pair", "ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    pair: TextPair
    ids: TokenIds
    def __init__(self, text: _Optional[str] = ..., pair: _Optional[_Union[TextPair, _Mapping]] = ..., ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class TextPair(_message.Message):
    __slots__ = ("text", "text_pair")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_pair: str
    def __init__(self, text: _Optional[str] = ..., text_pair: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("top_k", "return_logits", "no_truncate", "aggregation", "redact", "min_score", "min_scores", "return_tokens")
    class MinScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGITS_FIELD_NUMBER: _ClassVar[int]
    NO_TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    REDACT_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORES_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    return_logits: bool
    no_truncate: bool
    aggregation: Aggregation
    redact: bool
    min_score: float
    min_scores: _containers.ScalarMap[str, float]
    return_tokens: bool
    def __init__(self, top_k: _Optional[int] = ..., return_logits: bool = ..., no_truncate: bool = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., redact: bool = ..., min_score: _Optional[float] = ..., min_scores: _Optional[_Mapping[str, float]] = ..., return_tokens: bool = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Response(_message.Message):
    __slots__ = ("version", "id", "status", "message", "classify", "info")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    version: int
    id: int
    status: Status
    message: str
    classify: ClassifyResponse
    info: InfoResponse
    def __init__(self, version: _Optional[int] = ..., id: _Optional[int] = ..., status: _Optional[_Union[Status, str]] = ..., message: _Optional[str] = ..., classify: _Optional[_Union[ClassifyResponse, _Mapping]] = ..., info: _Optional[_Union[InfoResponse, _Mapping]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "model", "revision", "timings")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Result]
    model: str
    revision: str
    timings: Timings
    def __init__(self, results: _Optional[_Iterable[_Union[Result, _Mapping]]] = ..., model: _Optional[str] = ..., revision: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("label", "score", "scores", "logits", "tokens", "entities", "redacted", "token_outputs", "status", "message")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    logits: _containers.RepeatedScalarFieldContainer[float]
    tokens: int
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    redacted: str
    token_outputs: _containers.RepeatedCompositeFieldContainer[TokenOutput]
    status: Status
    message: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., logits: _Optional[_Iterable[float]] = ..., tokens: _Optional[int] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., redacted: _Optional[str] = ..., token_outputs: _Optional[_Iterable[_Union[TokenOutput, _Mapping]]] = ..., status: _Optional[_Union[Status, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "word", "start", "end", "start_byte", "end_byte", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    START_BYTE_FIELD_NUMBER: _ClassVar[int]
    END_BYTE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    word: str
    start: int
    end: int
    start_byte: int
    end_byte: int
    index: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., word: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., start_byte: _Optional[int] = ..., end_byte: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class TokenOutput(_message.Message):
    __slots__ = ("label", "score", "logits")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    logits: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., logits: _Optional[_Iterable[float]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_us", "tokenize_us", "inference_us", "total_us", "batch_size")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    tokenize_us: int
    inference_us: int
    total_us: int
    batch_size: int
    def __init__(self, queue_us: _Optional[int] = ..., tokenize_us: _Optional[int] = ..., inference_us: _Optional[int] = ..., total_us: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "revision", "architecture", "labels", "max_length", "device", "dtype", "ready", "problem_type", "task", "batches", "computed", "default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: str
    architecture: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    device: str
    dtype: str
    ready: bool
    problem_type: str
    task: str
    batches: int
    computed: int
    default: bool
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[str] = ..., architecture: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., ready: bool = ..., problem_type: _Optional[str] = ..., task: _Optional[str] = ..., batches: _Optional[int] = ..., computed: _Optional[int] = ..., default: bool = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model", "revision", "architecture", "labels", "max_length", "device", "dtype", "ready", "problem_type", "protocol_version", "server_version", "batches", "computed", "task", "models")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    architecture: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    device: str
    dtype: str
    ready: bool
    problem_type: str
    protocol_version: int
    server_version: str
    batches: int
    computed: int
    task: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., architecture: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., ready: bool = ..., problem_type: _Optional[str] = ..., protocol_version: _Optional[int] = ..., server_version: _Optional[str] = ..., batches: _Optional[int] = ..., computed: _Optional[int] = ..., task: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
