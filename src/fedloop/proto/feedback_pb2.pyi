from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACCEPT: _ClassVar[Action]
    EDIT_ACCEPT: _ClassVar[Action]
    REJECT: _ClassVar[Action]

class SignalKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_KIND_UNSPECIFIED: _ClassVar[SignalKind]
    CTA_SHOWN: _ClassVar[SignalKind]
    CTA_CLICKED: _ClassVar[SignalKind]
    ORDER_EVENT: _ClassVar[SignalKind]
    CART_EVENT: _ClassVar[SignalKind]
    DIALOGUE_STATE: _ClassVar[SignalKind]
    USER_MESSAGE: _ClassVar[SignalKind]
ACTION_UNSPECIFIED: Action
ACCEPT: Action
EDIT_ACCEPT: Action
REJECT: Action
SIGNAL_KIND_UNSPECIFIED: SignalKind
CTA_SHOWN: SignalKind
CTA_CLICKED: SignalKind
ORDER_EVENT: SignalKind
CART_EVENT: SignalKind
DIALOGUE_STATE: SignalKind
USER_MESSAGE: SignalKind

class DraftEvent(_message.Message):
    __slots__ = ("event_id", "draft_id", "user_id", "session_id", "prompt", "draft", "model_version", "prompt_version", "position", "timestamp_ms", "context")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    draft_id: str
    user_id: str
    session_id: str
    prompt: str
    draft: str
    model_version: str
    prompt_version: str
    position: int
    timestamp_ms: int
    context: _containers.RepeatedCompositeFieldContainer[ChatTurn]
    def __init__(self, event_id: _Optional[str] = ..., draft_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., prompt: _Optional[str] = ..., draft: _Optional[str] = ..., model_version: _Optional[str] = ..., prompt_version: _Optional[str] = ..., position: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., context: _Optional[_Iterable[_Union[ChatTurn, _Mapping]]] = ...) -> None: ...

class ChatTurn(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class OutcomeEvent(_message.Message):
    __slots__ = ("event_id", "draft_id", "action", "final_text", "dwell_ms", "timestamp_ms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FINAL_TEXT_FIELD_NUMBER: _ClassVar[int]
    DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    draft_id: str
    action: Action
    final_text: str
    dwell_ms: int
    timestamp_ms: int
    def __init__(self, event_id: _Optional[str] = ..., draft_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., final_text: _Optional[str] = ..., dwell_ms: _Optional[int] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class SignalEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "session_id", "kind", "draft_id", "value", "timestamp_ms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    session_id: str
    kind: SignalKind
    draft_id: str
    value: str
    timestamp_ms: int
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., kind: _Optional[_Union[SignalKind, str]] = ..., draft_id: _Optional[str] = ..., value: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("draft", "outcome", "signal")
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    draft: DraftEvent
    outcome: OutcomeEvent
    signal: SignalEvent
    def __init__(self, draft: _Optional[_Union[DraftEvent, _Mapping]] = ..., outcome: _Optional[_Union[OutcomeEvent, _Mapping]] = ..., signal: _Optional[_Union[SignalEvent, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("event_id", "duplicate")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    duplicate: bool
    def __init__(self, event_id: _Optional[str] = ..., duplicate: bool = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("stored", "duplicates")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    stored: int
    duplicates: int
    def __init__(self, stored: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("model_version", "canary")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    canary: bool
    def __init__(self, model_version: _Optional[str] = ..., canary: bool = ...) -> None: ...
