"""``dart-official``: the selection of the official DART code, reproduced as a tensor function.

DART (Wen et al. 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters
More", EMNLP 2025), official code github.com/ZichenWen1/DART. Our index holds only that repository's README
(commit 0c888673198b0f2784053a5686f95a519ceef209); the code was read in its public mirror xqy1111111/DART:
- ``llava/model/language_model/modeling_llama_self.py``, ``DART.get_retained_image_token`` and
  ``DART.forward`` (commit 9fee9fa199d591cf91891ad468ab52c754de9bf5), and the older module-level
  ``get_retained_image_token`` with ``DART_K_norm.forward`` (commit 0247657060a42dd329d6f273455bfad05d5b2c74);
- ``Qwen2-VL/Qwen2VL_DART/modeling_qwen2_vl_self.py`` (2207fe06b027465df7c92bc4c560fba6e15e59fc) and
  ``Qwen2_5-VL/Qwen2_5VL_DART/modeling_qwen2_5_vl_self.py`` (38d7b9c94d15c524171ffe60db5e45819d5ed505),
  ``DART.get_retained_image_token``;
- ``scripts/v1_5/eval/textvqa.sh`` (28b2b80aceee638322e5ec7330a71d7d556d10f4: ``--pruned_layer 2
  --pivot_image_token 4 --pivot_text_token 4``) and ``llava/eval/model_vqa_loader.py`` (0247657…:
  ``--max_num_trunction`` default 128).

What the official code does (all versions agree on the rule; batch size 1):
1. Before decoder layer K runs, take the outputs of layer K−1: its keys *after RoPE* (``layer_outputs[-2]``,
   [1, H, L, d] → [L, H·d], heads concatenated) and its hidden states passed through the model's *final
   norm* (``self.norm(layer_outputs[0])``).
2. Image pivots: the ``pivot_image_token`` (4) image tokens with the largest L1 key norm (``topk``). Text
   pivots: the ``pivot_text_token`` (4) tokens with the largest L1 key norm among *all tokens after the image*
   (``K_states[0][start + length:]`` — the question and the chat template's tail, never the system prompt).
3. ``TOKEN_TOPK = ⌊budget / (4 + 4)⌋`` with budget = ``max_num_trunction`` (LLaVA-1.5; written
   ``math.ceil(budget // 8)`` in 9fee9fa…, ``int(budget // 8)`` in 0247657…) or ``L_img·(1 − reduction_ratio)``
   (Qwen2-VL, Qwen2.5-VL: ``int(L_img·(1 − ρ) / 8)``). The pivot *counts* are fixed flags (4 and 4); they are
   not derived from the ratio — only TOKEN_TOPK is.
4. ``indices_set = set(image_pivot_positions + text_pivot_positions)``; for each pivot in ``list(indices_set)``
   — CPython's set order of their *sequence positions* — keep the TOKEN_TOPK image tokens, among those not kept
   yet and not image pivots, with the largest ``−cosine_similarity`` (final-norm hidden states) to the pivot.
5. Remove the text pivots; the image pivots and every pick are kept: ``4 + 8·TOKEN_TOPK`` image tokens.

Here: ``n`` plays the role of ``max_num_trunction``, so the kept count is
``min(N, p_img + (p_img + p_txt)·⌊n / (image_pivots + text_pivots)⌋)`` with ``p_img = min(image_pivots, N)``
and ``p_txt = min(text_pivots, text tokens after the last candidate)`` — ``4 + 8·⌊n/8⌋`` by default (more than n
when n mod 8 < 4, fewer when n mod 8 > 4); see :func:`official_keep_count`. n ≥ N keeps all N (the package
rule).

Differences from our ``dart`` (dart.py), all from the official code:
- **Count**: ``4 + 8·⌊n/8⌋`` (not exactly n); each of the 8 pivots takes ⌊n/8⌋ (ours shares n − 8 evenly).
- **Pivots**: 4 image + 4 text pivots; the text pivots choose tokens but are not kept (ours: 8 image pivots,
  all kept).
- **Keys**: L1 norm of the layer-(K−1) keys *after RoPE* (ours: the keys given, pre-RoPE from the adapters).
  RoPE keeps each rotated pair's L2 norm but not the L1 norm, so the pivots differ.
- **Similarity**: cosine of the layer-(K−1) output after the model's final RMSNorm, *including its weight*
  (ours: the raw hidden states; the weight makes the two cosines differ).
- **Order**: pivots visited in CPython set order of their sequence positions (ours: descending key norm);
  the order matters because each pivot's picks are no longer available to later pivots.

Where the official code had to be interpreted (each a case where it would raise, is unspecified, or cannot
be mirrored by candidate indices):
- **Ties**: ``torch.topk``'s order among equal values is unspecified; here ties go to the lower index (key
  norms and similarities alike). The official ``valid_indices_list = list(set(...))`` is ascending for the
  contiguous image ranges of LLaVA / Qwen (every position is below the set's table size), so "lower index"
  is "earlier in that list".
- **Set order** is computed by :func:`cpython_set_order`, a re-implementation of CPython's set insertion for
  small non-negative ints (hash(i) = i): slot = value mod table size (8 slots up to 4 elements, 32 for the 8
  pivots), linear probing over the next 9 slots, then perturbed jumps; resizes re-insert in slot order. The
  tests compare it with a real ``set`` on many inputs, collisions included. 9fee9fa… and the Qwen files
  iterate the set itself; 0247657… iterates ``indices_set.copy()``, which has the same order for 8 elements
  (checked) but not for 5–7 (fewer text pivots) — we follow the set itself.
- **Too few tokens**: fewer image tokens than ``image_pivots`` or fewer text tokens than ``text_pivots``
  make the official ``topk`` raise; here the pivots that exist are used (TOKEN_TOPK still divides by the
  configured 4 + 4). A pivot asking for more tokens than remain gets the rest (the official ``topk`` raises).
- **Candidates**: only our N candidates can be picked or be image pivots; LLaVA-NeXT's newline tokens, inside
  the official image range, are not candidates (and are not text: ``text_mask`` is False there). The
  LLaVA-NeXT branch (``retain_token_num_for_llava_next``) is not reproduced; n is the budget.
- **Text tokens** are those with ``text_mask`` True after the last candidate (the official "after the image").
- **Numerics**: norms and cosines in float32 (the official code runs in float16); the official LLaVA keys
  are repeated per query head (``repeat_kv``), which multiplies every L1 norm by the same factor — pass the
  key-value heads.

Steps (``return_steps=True``): the image pivots, phase ``"pivot"``, by descending key norm (``score`` = L1
norm of the post-RoPE key); then, pivot after pivot in set order, its picks, phase ``"duplicate-aware"``,
least similar first (``score`` = −cosine similarity, the value ``topk`` maximised); ``pivot`` = the image
pivot's candidate index, or ``text_pivot`` = the text pivot's sequence position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from d2pruner.methods.base import Method, SelectionInputs, SelectionStep, recorded_steps
from d2pruner.ops import top_n

#: CPython's set constants (Objects/setobject.c): first table size, linear probes, perturbation shift
SET_MINSIZE = 8
SET_LINEAR_PROBES = 9
SET_PERTURB_SHIFT = 5
#: hash(i) == i for 0 <= i < 2**61 - 1 (sys.hash_info.modulus on 64-bit builds)
_HASH_MODULUS = (1 << 61) - 1


def cpython_set_order(values: Sequence[int]) -> list[int]:
    """The iteration order of ``list(set(values))`` in CPython, for non-negative ints below 2**61 − 1.

    ``set(a_list)`` adds the elements one by one: each goes to slot ``value & mask`` or, if taken, to the
    first free one of the next 9 slots (when they fit in the table), else it jumps to
    ``(i·5 + 1 + perturb) & mask`` with ``perturb`` = the value shifted right by 5 at every jump. When
    ``5·fill ≥ 3·mask`` the table grows to the smallest power of two above ``4·used`` and the elements are
    re-inserted in slot order. Iteration walks the slots in order. Hence, without collisions, the order is
    by value modulo the table size (8 for up to 4 elements, 32 for 5–18).

    Args:
        values: non-negative ints (duplicates are dropped, as a set does).
    Returns:
        the distinct values in CPython's set iteration order.
    """
    table: list[int | None] = [None] * SET_MINSIZE
    used = 0
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _HASH_MODULUS:
            raise ValueError(f"values must be non-negative ints below 2**61 - 1; got {value!r}")
        if _set_insert(table, value):
            used += 1
            if used * 5 >= (len(table) - 1) * 3:
                grown: list[int | None] = [None] * _table_size(used * 4 if used <= 50000 else used * 2)
                for key in table:
                    if key is not None:
                        _set_insert(grown, key)
                table = grown
    return [key for key in table if key is not None]


def _table_size(min_used: int) -> int:
    size = SET_MINSIZE
    while size <= min_used:
        size <<= 1
    return size


def _set_insert(table: list[int | None], key: int) -> bool:
    """Insert ``key`` (its own hash) into an open-addressing table; False if it is already there."""
    mask = len(table) - 1
    slot, perturb = key & mask, key
    while True:
        probes = SET_LINEAR_PROBES if slot + SET_LINEAR_PROBES <= mask else 0
        for j in range(slot, slot + probes + 1):
            if table[j] is None:
                table[j] = key
                return True
            if table[j] == key:
                return False
        perturb >>= SET_PERTURB_SHIFT
        slot = (slot * 5 + 1 + perturb) & mask


def official_keep_count(
    n: int, num_visual: int, num_text: int, *, image_pivots: int = 4, text_pivots: int = 4
) -> int:
    """How many tokens ``dart-official`` keeps: ``min(N, p_img + (p_img + p_txt)·⌊n / (image + text pivots)⌋)``.

    Args:
        n: the budget (≥ 1), the official ``max_num_trunction``.
        num_visual: N, the number of candidates.
        num_text: text tokens after the last candidate.
        image_pivots, text_pivots: the configured pivot counts (official: 4 and 4).
    Returns:
        N when n ≥ N, else the official count (``4 + 8·⌊n/8⌋`` with enough tokens).
    """
    if n >= num_visual:
        return num_visual
    p_img, p_txt = min(image_pivots, num_visual), min(text_pivots, num_text)
    quota = n // (image_pivots + text_pivots)
    return p_img + min(num_visual - p_img, (p_img + p_txt) * quota)


@dataclass(frozen=True)
class PivotVisit:
    """One pivot's turn: the tokens it kept (least similar first).

    Attributes:
        position: the pivot's sequence position.
        candidate: its candidate index (an image pivot), or None (a text pivot).
        picks: [k] int64 candidate indices; k = min(TOKEN_TOPK, tokens still available).
        dissimilarity: [k] float32 −cosine similarity of each pick to the pivot.
    """

    position: int
    candidate: int | None
    picks: torch.Tensor
    dissimilarity: torch.Tensor


@dataclass(frozen=True)
class OfficialTrace:
    """The official DART selection, decision by decision.

    Attributes:
        image_pivots: [p_img] int64 candidate indices by descending key norm.
        key_norms: [p_img] float32 their L1 key norms.
        text_pivots: [p_txt] int64 sequence positions of the text pivots, by descending key norm.
        visits: the pivots' turns in CPython set order.
    """

    image_pivots: torch.Tensor
    key_norms: torch.Tensor
    text_pivots: torch.Tensor
    visits: tuple[PivotVisit, ...]

    @property
    def kept(self) -> torch.Tensor:
        """[k] int64 candidate indices in pick order (image pivots, then each visit's picks)."""
        return torch.cat([self.image_pivots, *(visit.picks for visit in self.visits)])


def official_dart_trace(
    seq_keys: torch.Tensor,
    seq_normed: torch.Tensor,
    visual_index: torch.Tensor,
    text_mask: torch.Tensor,
    n: int,
    *,
    image_pivots: int = 4,
    text_pivots: int = 4,
) -> OfficialTrace:
    """The official DART selection of ``1 <= n < N`` budget among N candidates.

    Args:
        seq_keys: [L, Dk] post-RoPE layer-(K−1) keys of every prompt token (any float dtype).
        seq_normed: [L, D] layer-(K−1) output of every prompt token after the model's final norm.
        visual_index: [N] int64 strictly increasing sequence positions of the candidates.
        text_mask: [L] bool, True at text tokens (False at every candidate).
        n: the budget, 1 <= n < N.
        image_pivots, text_pivots: the pivot counts (official flags ``pivot_image_token`` /
            ``pivot_text_token``, both 4).
    Returns:
        :class:`OfficialTrace`; its ``kept`` has :func:`official_keep_count` tokens.
    """
    device = seq_keys.device
    visual_index = visual_index.to(device)
    num = visual_index.shape[0]
    key_norms = seq_keys.float().abs().sum(dim=-1)  # [L]
    visual_norms = key_norms[visual_index]
    after_image = torch.arange(text_mask.shape[0], device=device) > visual_index[-1]
    text_positions = (text_mask.to(device) & after_image).nonzero().squeeze(1)

    chosen_images = top_n(visual_norms, min(image_pivots, num))
    chosen_texts = text_positions[top_n(key_norms[text_positions], min(text_pivots, text_positions.shape[0]))]
    quota = n // (image_pivots + text_pivots)

    image_positions = visual_index[chosen_images].tolist()
    candidate_at = dict(zip(image_positions, chosen_images.tolist(), strict=True))
    features = seq_normed.float()
    visual = features[visual_index]  # [N, D]
    available = torch.ones(num, dtype=torch.bool, device=device)
    available[chosen_images] = False
    remaining = num - chosen_images.shape[0]
    visits = []
    for position in cpython_set_order(image_positions + chosen_texts.tolist()):
        take = min(quota, remaining)
        if take == 0:
            continue
        similarity = torch.nn.functional.cosine_similarity(features[position].unsqueeze(0), visual, dim=-1)
        dissimilarity = torch.where(available, -similarity, torch.full_like(similarity, -float("inf")))
        picks = top_n(dissimilarity, take)
        available[picks] = False
        remaining -= take
        visits.append(PivotVisit(position, candidate_at.get(position), picks, dissimilarity[picks]))
    return OfficialTrace(chosen_images, visual_norms[chosen_images], chosen_texts, tuple(visits))


def _check_pivot_count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")


@dataclass
class DARTOfficial(Method):
    """DART as the official code selects (``4 + 8·⌊n/8⌋`` tokens; see the module docstring).

    Arguments:
        image_pivots: image pivots kept and visited (official ``pivot_image_token`` = 4), ≥ 1.
        text_pivots: text pivots visited, never kept (official ``pivot_text_token`` = 4), ≥ 0.
    Inputs: ``seq_keys`` [L, Dk], ``seq_normed`` [L, D], ``visual_index`` [N], ``text_mask`` [L] — all
    required; ``hidden``, ``attention``, ``keys``, ``grid``, ``prior`` are not used.
    Returns ``official_keep_count(n, N, text tokens after the last candidate)`` sorted unique indices.
    """

    name: ClassVar[str] = "dart-official"
    requires: ClassVar[tuple[str, ...]] = ("seq_keys", "seq_normed", "visual_index", "text_mask")
    requires_hint: ClassVar[str] = (
        "dart-official reads the whole prompt at layer K−1: post-RoPE keys, hidden states after the final norm, "
        "the candidates' sequence positions and the text mask; see d2pruner.methods.dart_official"
    )

    image_pivots: int = 4
    text_pivots: int = 4

    def __post_init__(self) -> None:
        _check_pivot_count("image_pivots", self.image_pivots, 1)
        _check_pivot_count("text_pivots", self.text_pivots, 0)

    def trace(self, inputs: SelectionInputs, n: int) -> OfficialTrace:
        """The official selection decision by decision (``1 <= n < N``)."""
        return official_dart_trace(
            inputs.seq_keys,
            inputs.seq_normed,
            inputs.visual_index,
            inputs.text_mask,
            n,
            image_pivots=self.image_pivots,
            text_pivots=self.text_pivots,
        )

    def _select(self, inputs: SelectionInputs, n: int) -> torch.Tensor:
        return self.trace(inputs, n).kept

    def _steps(self, inputs: SelectionInputs, n: int) -> list[SelectionStep]:
        trace = self.trace(inputs, n)
        steps = recorded_steps(trace.image_pivots, trace.key_norms, "pivot")
        for visit in trace.visits:
            text_pivot = visit.position if visit.candidate is None else None
            steps += [
                SelectionStep(
                    token=token, phase="duplicate-aware", score=value, pivot=visit.candidate, text_pivot=text_pivot
                )
                for token, value in zip(visit.picks.tolist(), visit.dissimilarity.tolist(), strict=True)
            ]
        return steps
