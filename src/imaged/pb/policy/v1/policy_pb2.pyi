from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PolicyVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_VERDICT_UNSPECIFIED: _ClassVar[PolicyVerdict]
    POLICY_VERDICT_VERIFIED: _ClassVar[PolicyVerdict]
    POLICY_VERDICT_WARNED: _ClassVar[PolicyVerdict]
    POLICY_VERDICT_UNVERIFIED: _ClassVar[PolicyVerdict]
    POLICY_VERDICT_DENIED: _ClassVar[PolicyVerdict]
    POLICY_VERDICT_ERROR: _ClassVar[PolicyVerdict]
POLICY_VERDICT_UNSPECIFIED: PolicyVerdict
POLICY_VERDICT_VERIFIED: PolicyVerdict
POLICY_VERDICT_WARNED: PolicyVerdict
POLICY_VERDICT_UNVERIFIED: PolicyVerdict
POLICY_VERDICT_DENIED: PolicyVerdict
POLICY_VERDICT_ERROR: PolicyVerdict

class PolicyTestRequest(_message.Message):
    __slots__ = ("config_yaml", "image_refs")
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REFS_FIELD_NUMBER: _ClassVar[int]
    config_yaml: str
    image_refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, config_yaml: _Optional[str] = ..., image_refs: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicyTestResult(_message.Message):
    __slots__ = ("image_ref", "verdict", "message", "digested_image_ref", "rule", "error_code")
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DIGESTED_IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    image_ref: str
    verdict: PolicyVerdict
    message: str
    digested_image_ref: str
    rule: str
    error_code: str
    def __init__(self, image_ref: _Optional[str] = ..., verdict: _Optional[_Union[PolicyVerdict, str]] = ..., message: _Optional[str] = ..., digested_image_ref: _Optional[str] = ..., rule: _Optional[str] = ..., error_code: _Optional[str] = ...) -> None: ...

class PolicyTestResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PolicyTestResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PolicyTestResult, _Mapping]]] = ...) -> None: ...
