"""Type stubs of the private C++ module (csrc/bindings/)."""

from typing import Any, Callable, ClassVar, Optional, Union

from typing_extensions import Buffer

class EcsoConfig:
    judge_template: str
    caption_template: str
    text_only_template: str
    system_prompt: Optional[str]
    chat_template: Optional[str]
    image_placement: str
    response_cut_chars: int
    verdict_rule: str
    reuse_kv: bool
    shadow_judge: bool
    verdict_override: Optional[bool]
    temperature: float
    top_p: float
    top_k: int
    seed: Optional[int]
    ignore_eos: bool
    logit_bias: dict[int, float]
    max_tokens_answer: Optional[int]
    max_tokens_judge: int
    max_tokens_caption: Optional[int]
    max_tokens_text_only: Optional[int]
    max_image_pixels: int
    judge_text_only: bool
    keep_conversations: int
    conversation_cache_mib: int
    reuse_answer_cells: bool
    judge_layout: str
    judge_mode: str
    judge_continue_template: str
    judge_chunk_tokens: int
    judge_chunk_sentences: bool
    judge_check_threshold: float
    def __init__(self, **kwargs: Any) -> None: ...
    @staticmethod
    def field_names() -> list[str]: ...
    @staticmethod
    def paper_preset() -> EcsoConfig: ...
    def system_prompt_for(self, model: Model) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...
    def replace(self, **kwargs: Any) -> EcsoConfig: ...
    def __eq__(self, other: object) -> bool: ...
    def __getstate__(self) -> dict[str, Any]: ...
    def __setstate__(self, state: dict[str, Any]) -> None: ...

class StepRecord:
    @property
    def name(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def stop_reason(self) -> str: ...
    @property
    def p_yes(self) -> Optional[float]: ...
    @property
    def input_tokens(self) -> list[int]: ...
    @property
    def stats(self) -> dict[str, Any]: ...

class EcsoResult:
    @property
    def answer(self) -> str: ...
    @property
    def initial_answer(self) -> str: ...
    @property
    def verdict_text(self) -> str: ...
    @property
    def caption(self) -> Optional[str]: ...
    @property
    def captions(self) -> list[str]: ...
    @property
    def unsafe(self) -> bool: ...
    @property
    def verdict_forced(self) -> bool: ...
    @property
    def judged_unsafe(self) -> bool: ...
    @property
    def judged(self) -> bool: ...
    @property
    def p_yes(self) -> Optional[float]: ...
    @property
    def steps(self) -> list[StepRecord]: ...
    @property
    def stats(self) -> dict[str, Any]: ...
    def to_dict(self) -> dict[str, Any]: ...

class Model:
    def __init__(
        self,
        text_model_path: str,
        mmproj_path: str,
        *,
        n_ctx: int,
        n_batch: int,
        n_gpu_layers: int,
        mmproj_gpu: bool,
        n_threads: int,
        n_threads_batch: int,
        flash_attn: Optional[bool],
        repack: Optional[bool],
        seed: int,
        verbose: bool,
    ) -> None: ...
    @property
    def text_model_path(self) -> str: ...
    @property
    def mmproj_path(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def projector_type(self) -> str: ...
    @property
    def projector_check(self) -> str: ...
    @property
    def image_size(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_ctx_train(self) -> int: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def n_threads_batch(self) -> int: ...
    @property
    def repack(self) -> bool: ...
    @property
    def n_gpu_layers(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def chat_template(self) -> Optional[str]: ...
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...

class CancelToken:
    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...

class Session:
    max_parallel: ClassVar[int]
    def __init__(self, model: Model, config: EcsoConfig, parallel: int = 1) -> None: ...
    @property
    def parallel(self) -> int: ...
    def run_many(
        self,
        n: int,
        source: Callable[[int], Union[tuple[Union[Buffer, bytes], int, int, Union[str, bytes], bool,
                                            Optional[Union[str, bytes]]],
                                      tuple[list[tuple[str, list[Union[str, tuple[bytes, int, int]]]]], bool]]],
        sink: Callable[[int, Union[EcsoResult, BaseException]], object],
        *,
        max_tokens: int,
        cancel: Optional[CancelToken] = None,
    ) -> None: ...
    def engine_stats(self) -> dict[str, int]: ...
    def run(
        self,
        pixels: Union[Buffer, bytes],
        width: int,
        height: int,
        query: Union[str, bytes],  # bytes: UTF-8 (checked)
        *,
        max_tokens: int,
        on_text: Optional[Callable[[str], object]] = None,
        on_progress: Optional[Callable[[str, str, int, int], object]] = None,
        cancel: Optional[CancelToken] = None,
        force_verdict: Optional[bool] = None,
    ) -> EcsoResult: ...
    def answer(
        self,
        pixels: Union[Buffer, bytes],
        width: int,
        height: int,
        query: Union[str, bytes],  # bytes: UTF-8 (checked)
        *,
        max_tokens: int,
        on_text: Optional[Callable[[str], object]] = None,
        on_progress: Optional[Callable[[str, str, int, int], object]] = None,
        cancel: Optional[CancelToken] = None,
    ) -> EcsoResult: ...
    def judge(
        self,
        pixels: Union[Buffer, bytes],
        width: int,
        height: int,
        query: Union[str, bytes],
        response: Union[str, bytes],
        *,
        on_progress: Optional[Callable[[str, str, int, int], object]] = None,
        cancel: Optional[CancelToken] = None,
    ) -> EcsoResult: ...
    def chat(
        self,
        messages: list[tuple[str, list[Union[str, tuple[bytes, int, int]]]]],
        *,
        max_tokens: int,
        on_text: Optional[Callable[[str], object]] = None,
        on_progress: Optional[Callable[[str, str, int, int], object]] = None,
        cancel: Optional[CancelToken] = None,
        protect: bool = True,
        sampling_from: Optional[EcsoConfig] = None,
    ) -> EcsoResult: ...
    def cache_stats(self) -> dict[str, int]: ...
    def clear_cache(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def config(self) -> EcsoConfig: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def chat_template_name(self) -> str: ...
    @property
    def prompt_head(self) -> str: ...
    @property
    def prompt_tail(self) -> str: ...

def system_info() -> dict[str, Any]: ...
