"""One llama.cpp model + context: chat prompt in, a stream of text pieces out, with stop, cancel and stats.

The token loop talks to llama.cpp's C API directly (`llama_decode` + the native sampler chain): each
generated token costs a handful of C calls and no Python-side logits work, which is what keeps generation
as fast as llama.cpp's own tools. Between turns of a chat the KV cache is kept, and only the part of the
new prompt that differs from what the cache already holds is evaluated again.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp as L

from . import chat_formats, chat_template, llamacpp, rpc
from ..plan import memory, placement
from ..errors import EdgeError, UsageError
from ..fsutil import human_bytes
from ..plan.hardware import LoadTracker, detect
from ..plan.memory import KV_TYPES
from ..plan.planner import Plan, gpu_layers_text, revalidate
from .reasoning import switch_variables
from .sampling import Sampling
from .speculate import Pace, Speculation, VerifyBatch
from .images import Picture
from .vision import MediaPrompt, Projector
from ..testhooks import pause_point

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed
PENALTY_LAST_N = 64  # how many recent tokens the repeat penalty looks at (llama.cpp's default)
N_BATCH, N_UBATCH = 2048, 512  # llama-bench's defaults: prompt speed is compared against pp512 with these


@dataclass
class GenStats:
    prompt_tokens: int  # tokens in the rendered prompt
    gen_tokens: int  # tokens generated (the end-of-turn token is not counted)
    ttft_s: float  # call start -> first generated token
    prompt_tps: float  # prompt tokens evaluated per second
    gen_tps: float  # tokens per second after the first (each costs one evaluation and one sampling)
    finish_reason: str  # "stop" | "length" | "cancelled" | "context"
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (the rest were reused from the KV cache)
    total_s: float = 0.0
    n_threads: int = 0  # CPU threads the reply ran with (at its end: a long one follows the load)
    draft: str = ""  # what guessed tokens ahead ("n-gram", a draft model), "" without speculation
    spec_steps: int = 0  # evaluations that checked guessed tokens
    spec_tokens: int = 0  # tokens those evaluations gave (kept guesses + the target's own token each)
    drafted: int = 0  # tokens guessed
    accepted: int = 0  # guessed tokens the model agreed with
    thinking_tokens: int = 0  # of gen_tokens, those a thinking model spent on its reasoning (counted by who splits the reply)

    @property
    def acceptance(self) -> float:
        """Share of guessed tokens kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens out of each evaluation that checked guesses (1 would be plain decoding)."""
        return self.spec_tokens / self.spec_steps if self.spec_steps else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.draft:
            d["acceptance"] = round(self.acceptance, 4)
            d["tokens_per_step"] = round(self.tokens_per_step, 3)
        return d


@dataclass(frozen=True)
class EngineInfo:
    name: str
    level: str
    path: Path
    n_layers: int
    n_gpu_layers: int
    n_ctx: int
    n_threads: int
    kv_type: str
    load_s: float
    plan: object | None = field(default=None, repr=False, compare=False)  # the Plan it was loaded with
    loras: tuple[str, ...] = ()  # the LoRA adapters applied, as "name" or "name ×scale"
    devices: tuple[str, ...] = ()  # the GPUs the offloaded layers went to (ggml device names)
    # what llama.cpp says it allocated: buffer (CPU_Mapped, Vulkan0, CUDA_Host, ...) -> kind -> bytes
    allocated: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)
    projector: Path | None = None  # a vision model's projector (mmproj) GGUF, loaded with it

    @property
    def device_bytes(self) -> dict[str, int]:
        """Bytes llama.cpp allocated on each GPU of this load."""
        return {d: sum(self.allocated.get(d, {}).values()) for d in self.devices}

    @property
    def gpu_layers(self) -> str:
        return gpu_layers_text(self.n_gpu_layers, self.n_layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["projector"] = str(self.projector) if self.projector else None
        d.pop("plan")
        d["device_bytes"] = self.device_bytes
        return d


def sampler_chain(vocab, s: Sampling, history: Sequence[int] = (), head=None):
    """llama.cpp's native chain: [head,] penalties, top-k, top-p, min-p, temperature, then a seeded draw.

    `history` are tokens already in the context, which the penalties count from the start. `head` is a
    sampler that sees the whole vocabulary before anything narrows it (a grammar).

    The penalties only ever lower logits (repeat penalty >= 1, presence/frequency >= 0), and at most
    PENALTY_LAST_N distinct tokens are penalized, so the best k after penalizing are always among the best
    k + PENALTY_LAST_N before: a top-k of that size first gives the same result without scanning the
    whole vocabulary with the penalty each token (0.2 ms per token on a 49k vocabulary, a few % of a small
    model's speed)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    add = lambda smpl: L.llama_sampler_chain_add(chain, smpl)  # noqa: E731 - the chain owns each sampler
    if head is not None:
        add(head)
    greedy = s.temperature <= 0
    top_k = 1 if greedy else (s.top_k if s.top_k and s.top_k > 0 else 0)
    penalties = (s.repeat_penalty or 1.0, s.frequency_penalty, s.presence_penalty)
    if penalties != (1.0, 0.0, 0.0):
        if top_k and penalties[0] >= 1.0 and min(penalties[1:]) >= 0.0:
            add(L.llama_sampler_init_top_k(top_k + PENALTY_LAST_N))
        penalty = L.llama_sampler_init_penalties(L.llama_vocab_n_tokens(vocab), PENALTY_LAST_N, *penalties)
        for t in history[-PENALTY_LAST_N:]:
            if t >= 0:  # (an image's positions are no tokens)
                L.llama_sampler_accept(penalty, t)
        add(penalty)
    if greedy:
        add(L.llama_sampler_init_greedy())
        return chain
    if top_k:
        add(L.llama_sampler_init_top_k(top_k))
    if s.top_p and s.top_p < 1.0:
        add(L.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p and s.min_p > 0.0:
        add(L.llama_sampler_init_min_p(s.min_p, 1))
    add(L.llama_sampler_init_temp(s.temperature))
    add(L.llama_sampler_init_dist(LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF))
    return chain


def _placement(plan: Plan) -> str:
    """Where the plan puts the layers, in words."""
    if plan.workers:
        return f"{plan.gpu_layers} layers on {', '.join(w.endpoint for w in plan.workers)}"
    if plan.n_gpu_layers:
        return f"{plan.gpu_layers} layers on {', '.join(plan.devices) or 'the GPU'}"
    return "every layer on the CPU"


def _lower_hint(plan: Plan) -> str:
    """For a load that failed with layers on a GPU: the plan, and the flags that need less device memory."""
    if not plan.n_gpu_layers or plan.workers:
        return ""
    fewer = max(0, plan.n_gpu_layers - max(1, (plan.n_layers + 1) // 4))
    return (
        f" (the plan put {_placement(plan)}, {human_bytes(plan.memory.vram)} of device memory: "
        f"--ngl {fewer} or a smaller --ctx than {plan.n_ctx} needs less)"
    )


# Vocabularies whose special tokens llama.cpp sets up by the model's name: (architecture, tokenizer model) -> what
# general.name must contain. Phi-3's SentencePiece files mark their turn tokens to swallow the whitespace after
# them (rstrip), as transformers does, only when the name says Phi-3; a renamed or re-uploaded file would be
# tokenized otherwise.
NAME_DEPENDENT_VOCABS = {("phi3", "llama"): ("phi-3", "phi3")}


def _name_override(path: Path) -> ctypes.Array | None:
    """llama_model_params.kv_overrides that give general.name what llama.cpp looks for, where the file's own name
    lacks it (the list must stay alive until the load)."""
    from ..formats.gguf_info import read_gguf

    info = read_gguf(path)
    meta = info.metadata
    needs = NAME_DEPENDENT_VOCABS.get((meta.get("general.architecture"), meta.get("tokenizer.ggml.model")))
    name = str(meta.get("general.name") or "")
    if not needs or any(n in name.lower() for n in needs):
        return None
    overrides = (L.llama_model_kv_override * 2)()  # the zeroed last entry (empty key) ends the list
    overrides[0].tag = L.LLAMA_KV_OVERRIDE_TYPE_STR
    overrides[0].key = b"general.name"
    overrides[0].value.val_str = f"{name} ({needs[1]})".encode()[:127]
    return overrides


def _offload_to_devices(mp, names: tuple[str, ...]) -> ctypes.Array:
    """Point llama_model_params `mp` at the ggml devices `names`, in order (the offloaded layers are shared among
    them as llama.cpp shares them: by free memory; none: the CPU alone). Returns the list, which must stay alive
    until the load."""
    handles = [llamacpp.device_handle(n) for n in names]
    dev_list = (ctypes.c_void_p * (len(handles) + 1))(*handles)  # the last entry stays NULL: the end of the list
    mp.devices = ctypes.addressof(dev_list)
    return dev_list


def _keep_loading(interrupted: threading.Event) -> bool:
    """llama.cpp's progress callback while a model loads: False (after Ctrl-C) stops the load."""
    pause_point("engine.load", until=interrupted.is_set)
    return not interrupted.is_set()


class Engine:
    """A loaded model. Not thread-safe: one stream at a time (cancel it from any thread)."""

    def __init__(self, model, ctx, info: EngineInfo, loras: list | None = None, vision: Projector | None = None):
        self._model = model
        self._ctx = ctx
        self._loras = loras or []  # llama.cpp adapter handles, freed between the context and the model
        self.vision = vision  # a vision model's projector: the model is shown pictures
        self.info = info
        self._vocab = L.llama_model_get_vocab(model)
        self._bos = L.llama_vocab_bos(self._vocab)
        self._add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = self._special_text(self._bos)
        self._eos_text = self._special_text(L.llama_vocab_eos(self._vocab))
        stored = (L.llama_model_chat_template(model, None) or b"").decode("utf-8", errors="replace") or None
        tokenizer = "spm" if L.llama_vocab_type(self._vocab) == L.LLAMA_VOCAB_TYPE_SPM else None
        # the template's source, and where it came from (the model's own, inferred, --chat-template)
        self._template, self.template_origin = chat_formats.choose(
            info.plan.chat_template if info.plan else None, stored, self._is_single_token, tokenizer
        )
        self._pieces: dict[int, bytes] = {}
        self._kv: list[int] = []  # the tokens the KV cache holds, in order
        self._n_batch = L.llama_n_batch(ctx)
        self.last_stats: GenStats | None = None
        plan = info.plan
        adaptive = getattr(plan, "adaptive_threads", 0)
        self._load = LoadTracker(adaptive, info.n_threads) if adaptive else None
        self.speculation: Speculation | None = None  # guessing tokens ahead (use_speculation)
        self._pace: Pace | None = None

    # --- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, plan: Plan, projector: Path | None = None) -> "Engine":
        """Load the model as `plan` says (`edgellm.engine.launch` makes plans from names and options). A plan that puts
        layers on a GPU is first checked against the GPUs there are now: fewer layers if one shrank or vanished.
        With plan.n_seq > 1 the context holds that many sequences of n_ctx / n_seq tokens each (a server's slots).
        `projector`: a vision model's mmproj GGUF, loaded on the text model (on the GPU when layers are there)."""
        if plan.n_gpu_layers and not plan.workers:  # layers on workers were planned with what they lend now
            plan = revalidate(plan, detect())
        path = Path(plan.path)
        n_ctx, ngl, threads, kv_type = plan.n_ctx, plan.n_gpu_layers, plan.n_threads, plan.kv_type
        llamacpp.init()
        t0 = time.perf_counter()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = ngl
        experts_in_ram = placement.cpu_experts(plan.n_cpu_moe) if ngl else None  # alive until the model is loaded
        mp.tensor_buft_overrides = ctypes.addressof(experts_in_ram) if experts_in_ram is not None else None
        on_workers = rpc.offload_to_workers(mp, plan) if plan.workers else ()  # noqa: F841 - alive until loaded
        renamed = _name_override(path)  # alive until loaded
        mp.kv_overrides = ctypes.cast(renamed, ctypes.POINTER(L.llama_model_kv_override)) if renamed is not None else None
        # no GPU layers: no GPU at all (llama.cpp would still send prompt batches to one, with buffers the plan
        # did not count); else the plan's GPUs (all of llama.cpp's when it names none: a simulated machine)
        on_gpus = _offload_to_devices(mp, plan.devices if ngl else ()) if not plan.workers and (plan.devices or not ngl) else ()  # noqa: F841
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_seq_max = plan.n_seq
        cp.n_batch = min(N_BATCH, n_ctx)
        cp.n_ubatch = min(plan.n_ubatch, N_UBATCH, cp.n_batch)
        cp.n_threads = cp.n_threads_batch = threads
        cp.type_k = cp.type_v = KV_TYPES[kv_type]
        cp.swa_full = False  # sliding-window layers keep a window-sized cache, as planned
        doing = f"loading {path.name}: {_placement(plan)}, {n_ctx}-token context, KV cache {kv_type}"
        with llamacpp.sigint_deferred() as interrupted, llamacpp.capture_log() as log, llamacpp.doing(doing):
            # llama.cpp asks after each tensor whether to go on: Ctrl-C stops a large model's load there.
            # (The struct keeps the callback alive while `mp` lives.)
            mp.progress_callback = L.llama_progress_callback(lambda _p, _u: _keep_loading(interrupted))
            model = L.llama_model_load_from_file(str(path).encode(), mp)
            ctx = L.llama_init_from_model(model, cp) if model and not interrupted.is_set() else None
            if interrupted.is_set():  # leaving the block raises KeyboardInterrupt
                if ctx:
                    L.llama_free(ctx)
                if model:
                    L.llama_model_free(model)
        if not model:
            raise EdgeError(f"llama.cpp could not load {path}: {llamacpp.last_error() or 'unknown error'}{_lower_hint(plan)}")
        if not ctx:
            L.llama_model_free(model)
            raise EdgeError(
                f"llama.cpp could not make a {n_ctx}-token context for {path.name}: "
                f"{llamacpp.last_error() or 'out of memory?'}{_lower_hint(plan)}"
            )
        loras: list = []
        try:
            loras = llamacpp.load_loras(model, ctx, [(a.path, a.scale) for a in plan.loras])
            vision = Projector(projector, model, threads, use_gpu=bool(ngl)) if projector else None
        except BaseException:
            L.llama_free(ctx)
            llamacpp.free_loras(loras)
            L.llama_model_free(model)
            raise
        n_layers = L.llama_model_n_layer(model)
        for w in plan.workers:
            if not w.device:
                rpc.bound_waits(rpc.Worker(w.host, w.port))
        info = EngineInfo(
            name=plan.name or path.stem,
            level=plan.level,
            path=path,
            n_layers=n_layers,
            n_gpu_layers=min(ngl, n_layers + 1),
            n_ctx=L.llama_n_ctx(ctx),
            n_threads=threads,
            kv_type=kv_type,
            load_s=time.perf_counter() - t0,
            plan=plan,
            loras=tuple(a.label for a in plan.loras),
            devices=plan.devices if ngl else (),
            allocated=memory.allocations(log),
            projector=Path(projector) if projector else None,
        )
        return cls(model, ctx, info, loras, vision)

    def use_speculation(self, spec: Speculation | None, close_previous: bool = True) -> None:
        """Guess tokens ahead with `spec` from the next reply on (None: plain decoding). The engine owns it; the one
        it had is closed unless `close_previous` is False (a caller that switches between several)."""
        if close_previous and self.speculation is not None and self.speculation is not spec:
            self.speculation.close()
        self.speculation = spec
        self._pace = Pace(spec.draft_min, spec.draft_max, spec.adaptive) if spec is not None else None

    def close(self) -> None:
        if self.speculation is not None:
            self.speculation.close()
            self.speculation = None
        if self.vision is not None:
            self.vision.close()
            self.vision = None
        if self._ctx:
            L.llama_free(self._ctx)
            self._ctx = None
        llamacpp.free_loras(self._loras)
        if self._model:
            L.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --- text <-> tokens ----------------------------------------------------------------------------

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes `token` stands for (a UTF-8 character may span several tokens)."""
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of `text`, special tokens parsed unless `special` is false (text from a user, read as
        plain text). BOS is added only when the model wants one and the text does not start with it already
        (chat templates often write it themselves)."""
        if add_bos is None:
            add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    @property
    def context(self):
        """llama.cpp's context and vocabulary handles, for code that drives the context itself (the server's
        scheduler). They live as long as the engine."""
        return self._ctx

    @property
    def vocab(self):
        return self._vocab

    @property
    def chat_template(self) -> str | None:
        """The chat template's source this engine renders with."""
        return self._template

    @property
    def model(self):
        """llama.cpp's model handle, for a second context on the same weights (embeddings)."""
        return self._model

    @property
    def n_vocab(self) -> int:
        return L.llama_vocab_n_tokens(self._vocab)

    def _is_single_token(self, text: str) -> bool:
        return len(self.tokenize(text, add_bos=False)) == 1

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def render_chat(
        self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None,
        think: bool | str | None = None,
    ) -> str:
        """The prompt text for `messages` (and the functions the model may call), from the model's own chat template.
        `think` switches a thinking model's reasoning on or off, or sets its effort ("low"...), where its template
        reads the switch or the effort (None: its default)."""
        return chat_template.render(
            self._template, messages, add_generation_prompt, bos_token=self._bos_text, eos_token=self._eos_text, tools=tools,
            variables=switch_variables(self._template, think),
        )

    # --- generation ---------------------------------------------------------------------------------

    def _sampler(self, s: Sampling):
        return sampler_chain(self._vocab, s)

    def reuse_prefix(self, tokens: list[int]) -> int:
        """Drop from the KV cache what differs from `tokens`; return how many leading tokens it still holds."""
        n = 0
        for a, b in zip(self._kv, tokens):
            if a != b:
                break
            n += 1
        n = min(n, len(tokens) - 1)  # the last prompt token is always evaluated again: it gives the logits
        mem = L.llama_get_memory(self._ctx)
        if not L.llama_memory_seq_rm(mem, 0, n, -1) or not self.window_kept(n):
            L.llama_memory_clear(mem, True)
            n = 0
        del self._kv[n:]
        return n

    def window_kept(self, n: int, seq: int = 0) -> bool:
        """Whether sequence `seq`'s cache still holds every position that position n attends to: after its
        first n tokens are kept, may evaluation go on from there? A sliding-window layer's cache (swa_full
        off) forgets positions more than a window behind the newest one it holds."""
        n_swa = L.llama_model_n_swa(self._model)
        if n_swa <= 0 or n == 0:
            return True
        pos_min = L.llama_memory_seq_pos_min(L.llama_get_memory(self._ctx), seq)  # -1: nothing before n is left
        return 0 <= pos_min <= max(0, n - n_swa)

    def _decode(self, tokens: list[int]) -> None:
        arr = (L.llama_token * len(tokens))(*tokens)
        rc = L.llama_decode(self._ctx, L.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise EdgeError(f"llama.cpp failed to evaluate {len(tokens)} tokens (code {rc}): {llamacpp.last_error()}")
        self._kv.extend(tokens)

    def reset(self) -> None:
        """Forget everything in the KV cache (the next prompt is evaluated from scratch)."""
        L.llama_memory_clear(L.llama_get_memory(self._ctx), True)
        self._kv.clear()

    def evaluate(self, tokens: list[int]) -> None:
        """Evaluate `tokens` after what the cache holds, in batches, and wait until the backend is done."""
        for i in range(0, len(tokens), self._n_batch):
            self._decode(tokens[i : i + self._n_batch])
        L.llama_synchronize(self._ctx)

    def stream_chat(
        self, messages: list[dict], sampling: Sampling | None = None, cancel: threading.Event | None = None, think: bool | None = None,
        images: Sequence[Picture] = (),
    ) -> Iterator[str]:
        """Render `messages` with the chat template and stream the reply as text pieces. With `images`, the
        messages hold vision.MARKER where each goes, in order."""
        if not messages:
            raise UsageError("nothing to answer: the chat has no messages")
        if images:
            return self.stream_media(self.render_chat(messages, think=think), images, sampling, cancel)
        return self.stream_prompt(self.render_chat(messages, think=think), sampling, cancel)

    def media_prompt(self, prompt: str, images: Sequence[Picture]) -> MediaPrompt:
        """The prompt text (vision.MARKER where each image goes) split into text and image chunks. Close it after use."""
        if self.vision is None:
            raise UsageError(f"{self.info.name} takes no images: it has no projector (a vision model's mmproj file, --mmproj)")
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        return self.vision.tokenize(prompt, images, add_bos)

    def stream_media(
        self, prompt: str, images: Sequence[Picture], sampling: Sampling | None = None, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Stream the continuation of prompt text with pictures (vision.MARKER where each goes)."""
        if self._ctx is None:
            raise EdgeError("the model is closed")
        media = self.media_prompt(prompt, images)
        if len(media.keys) >= self.info.n_ctx:
            media.close()
            raise UsageError(
                f"the prompt with its images is {len(media.keys)} tokens but the context holds {self.info.n_ctx}: "
                "fewer images, or raise --ctx"
            )
        return self._generate(media.keys, sampling or Sampling(), cancel, media)

    def stream_prompt(
        self, prompt: str, sampling: Sampling | None = None, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Stream the continuation of raw prompt text (already templated). Errors are raised before the first piece."""
        if self._ctx is None:
            raise EdgeError("the model is closed")
        return self.stream_tokens(self.tokenize(prompt), sampling, cancel)

    def stream_tokens(
        self, tokens: list[int], sampling: Sampling | None = None, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Stream the continuation of a prompt given as token ids."""
        if self._ctx is None:
            raise EdgeError("the model is closed")
        n_ctx = self.info.n_ctx
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= n_ctx:
            raise UsageError(
                f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}: shorten it or raise --ctx"
            )
        return self._generate(tokens, sampling or Sampling(), cancel)

    def adapt_threads(self, midway: bool = False) -> int:
        """Threads again from the cores other programs kept busy since the last look (unless the user fixed
        them): before a reply, and `midway` through one or between a server's batches at most every
        `LoadTracker.RECHECK_S`. A busy core shared with a llama.cpp thread stalls all of them."""
        if self._load is not None and (not midway or self._load.due()):
            n = self._load.threads()
            if n != self.info.n_threads:
                L.llama_set_n_threads(self._ctx, n, n)
                self.info = replace(self.info, n_threads=n)
        return self.info.n_threads

    def _evaluate_media(self, media: MediaPrompt, n_keep: int, cancel: threading.Event | None) -> int:
        """Evaluate the chunks of `media` after the first n_keep positions the cache holds (an image partly held is
        evaluated again whole). Returns the positions evaluated."""
        for c in media.chunks:
            if c.start + c.n_pos > n_keep and c.tokens is None and c.start < n_keep:
                n_keep = c.start
                L.llama_memory_seq_rm(L.llama_get_memory(self._ctx), 0, n_keep, -1)
                del self._kv[n_keep:]
        start = n_keep
        last = media.chunks[-1]
        for c in media.chunks:
            if c.start + c.n_pos <= n_keep:
                continue
            if cancel is not None and cancel.is_set():
                break
            if c.tokens is None:
                self.vision.evaluate(self._ctx, c, 0, self._n_batch, logits_last=c is last)
                self._kv.extend(media.keys[c.start : c.start + c.n_pos])
            else:
                todo = c.tokens[n_keep - c.start :] if n_keep > c.start else c.tokens
                for i in range(0, len(todo), self._n_batch):
                    self._decode(todo[i : i + self._n_batch])
        return len(self._kv) - start

    def _generate(self, tokens: list[int], s: Sampling, cancel: threading.Event | None, media: MediaPrompt | None = None) -> Iterator[str]:
        t0 = time.perf_counter()
        vocab, pieces = self._vocab, self._pieces
        max_tokens, ignore_eos = s.max_tokens, s.ignore_eos
        stats = GenStats(len(tokens), 0, 0.0, 0.0, 0.0, "cancelled", n_threads=self.adapt_threads())
        self.last_stats = stats
        smpl = self._sampler(s)
        try:
            n_keep = self.reuse_prefix(tokens)
            for t in tokens[-PENALTY_LAST_N:]:  # the penalties count what the prompt already said
                if t >= 0:  # (an image's positions are no tokens)
                    L.llama_sampler_accept(smpl, t)
            if media is not None:
                stats.prompt_eval_tokens = self._evaluate_media(media, n_keep, cancel)
            for i in range(n_keep, len(tokens) if media is None else n_keep, self._n_batch):
                if cancel is not None and cancel.is_set():
                    return
                self._decode(tokens[i : i + self._n_batch])
            if media is not None and cancel is not None and cancel.is_set():  # the images may be half evaluated
                return
            t_prompt = time.perf_counter()
            if media is None:
                stats.prompt_eval_tokens = len(tokens) - n_keep
            stats.prompt_tps = stats.prompt_eval_tokens / max(t_prompt - t0, 1e-9)

            utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            n_gen, n_sampled, t_first = 0, 0, None
            load, recheck = self._load, time.monotonic() + LoadTracker.RECHECK_S
            # guessing ahead matches tokens against the context, where an image's positions are none
            spec = self.speculation if min(self._kv, default=0) >= 0 else None
            produce = self._speculative_tokens(smpl, spec, stats) if spec is not None else self._plain_tokens(smpl, stats)
            try:
                for tok in produce:
                    n_sampled += 1
                    if cancel is not None and cancel.is_set():
                        stats.finish_reason = "cancelled"
                        break
                    if not ignore_eos and L.llama_vocab_is_eog(vocab, tok):
                        stats.finish_reason = "stop"
                        break
                    n_gen += 1
                    if t_first is None:
                        t_first = time.perf_counter()
                        stats.ttft_s = t_first - t0
                    piece = pieces.get(tok)
                    if piece is None:
                        piece = pieces[tok] = self.piece(tok)
                    text = utf8.decode(piece)
                    stats.gen_tokens = n_gen
                    if text:
                        yield text
                    if max_tokens is not None and n_gen >= max_tokens:
                        stats.finish_reason = "length"
                        break
                    if load is not None and time.monotonic() >= recheck:  # a long reply follows the load too
                        stats.n_threads = self.adapt_threads(midway=True)
                        recheck = time.monotonic() + LoadTracker.RECHECK_S
            finally:
                produce.close()  # a speculative producer gives back the cache positions nobody took
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
            t_end = time.perf_counter()
            if n_sampled > 1 and t_first is not None:  # each token after the first (an end token too)
                stats.gen_tps = (n_sampled - 1) / max(t_end - t_first, 1e-9)
        finally:
            stats.total_s = time.perf_counter() - t0
            L.llama_sampler_free(smpl)
            if media is not None:
                media.close()

    def _plain_tokens(self, smpl, stats: GenStats) -> Iterator[int]:
        """One token sampled, then evaluated when the caller asks for the next one."""
        ctx, kv, n_ctx = self._ctx, self._kv, self.info.n_ctx
        one = (L.llama_token * 1)()
        batch = L.llama_batch_get_one(one, 1)
        while True:
            tok = L.llama_sampler_sample(smpl, ctx, -1)
            yield tok
            if len(kv) >= n_ctx:
                stats.finish_reason = "context"
                return
            one[0] = tok
            rc = L.llama_decode(ctx, batch)
            if rc != 0:
                if rc == 1:  # no room left in the KV cache
                    stats.finish_reason = "context"
                    return
                raise EdgeError(f"llama.cpp failed to evaluate a token (code {rc}): {llamacpp.last_error()}")
            kv.append(tok)

    def _speculative_tokens(self, smpl, spec: Speculation, stats: GenStats) -> Iterator[int]:
        """Tokens as `_plain_tokens` gives them, several per evaluation where guesses come true (module speculate).
        On the way out the cache is cut back to the tokens kept (self._kv)."""
        ctx, kv, n_ctx, pace = self._ctx, self._kv, self.info.n_ctx, self._pace
        mem = L.llama_get_memory(ctx)
        sample, clock = L.llama_sampler_sample, time.perf_counter
        proposer = spec.proposer(list(kv))
        verify = VerifyBatch(spec.draft_max + 1)
        one = (L.llama_token * 1)()
        single = L.llama_batch_get_one(one, 1)
        stats.draft = spec.name
        try:
            tok = sample(smpl, ctx, -1)
            while True:
                yield tok
                proposer.extend([tok])
                n_past = len(kv)
                room = n_ctx - n_past - 1  # guesses after tok that still fit
                if room < 0:
                    stats.finish_reason = "context"
                    return
                t = clock()
                k = min(pace.length(), room)
                guess = proposer.propose(k, pace.tentative) if k > 0 else []
                if len(guess) < spec.draft_min:
                    guess = []
                if not guess:  # a plain step, as _plain_tokens takes it
                    one[0] = tok
                    if not self._evaluated(L.llama_decode(ctx, single), 1, stats):
                        return
                    kv.append(tok)
                    tok = sample(smpl, ctx, -1)
                    pace.plain_step(clock() - t)
                    continue
                verify.fill([tok, *guess], n_past)
                if not self._evaluated(L.llama_decode(ctx, verify.batch), len(guess) + 1, stats):
                    return
                kv.append(tok)
                kept: list[int] = []
                for i, g in enumerate(guess):
                    out = sample(smpl, ctx, i)
                    if out != g:
                        break
                    kept.append(g)
                else:
                    out = sample(smpl, ctx, len(guess))
                kv.extend(kept)
                L.llama_memory_seq_rm(mem, 0, len(kv), -1)  # the rejected guesses
                pace.speculative_step(len(guess), len(kept), clock() - t)
                stats.spec_steps += 1
                stats.spec_tokens += len(kept) + 1
                stats.drafted += len(guess)
                stats.accepted += len(kept)
                for g in kept:
                    yield g
                proposer.extend(kept)
                tok = out
        finally:
            L.llama_memory_seq_rm(mem, 0, len(kv), -1)
            verify.free()
            close = getattr(proposer, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _evaluated(rc: int, n: int, stats: GenStats) -> bool:
        """Whether llama_decode of n tokens worked; False when the KV cache has no room left (the reply ends there)."""
        if rc == 1:
            stats.finish_reason = "context"
            return False
        if rc != 0:
            raise EdgeError(f"llama.cpp failed to evaluate {n} tokens (code {rc}): {llamacpp.last_error()}")
        return True
