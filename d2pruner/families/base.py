"""The interface every model family implements — one subclass per file, everything that family knows in it.

A :class:`Family` answers, for one transformers model family:

* **anatomy** — the transformers class and ``model_type`` values, where the decoder layers are, the image token;
* **preprocessing** — how its processor is loaded (and the fallback when it cannot be), the chat text with one
  image, the model inputs;
* **token layout** — :meth:`Family.layout` replays the processor's size arithmetic and the model's feature packing
  for an image size (:mod:`d2pruner.geometry`); :meth:`Family.visual_tokens` places that layout in a prompt's
  sequence (checked against the prompt's image tokens);
* **grounding** — its prompt, its answer markup, the units and frame of its numbers;
* **priors** — which grids share a prior map (roles) and which change shape with the image;
* **a tiny model** of the real class with random weights, for offline tests and the app's fallback;
* **checkpoints** — the supported hub ids with the architecture numbers of the efficiency arithmetic and the
  weights' size (checked against free memory before a download).

Generic code (the hooks, the analysis, the app) asks the family; it never keys a table on a family name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from d2pruner.architecture import ModelArch
from d2pruner.geometry import Box, VisualLayout
from d2pruner.grounding import first_box, model_to_original, original_to_model
from d2pruner.ops import GridView
from d2pruner.tokens import VisualTokens


@dataclass
class ProcessorParts:
    """Tokenizer + image processor, for families whose full processor cannot be built (Qwen2.5-VL and InternVL
    need torchvision for their video processor). The family expands the image tokens itself."""

    tokenizer: Any
    image_processor: Any


@dataclass(frozen=True)
class Checkpoint:
    """A supported hub checkpoint of a family.

    Attributes:
        hub_id: e.g. ``"llava-hf/llava-1.5-7b-hf"``.
        arch: the language model's shape (what prefill FLOPs and the KV cache depend on), with the visual tokens
            of one typical image as ``nominal_visual_tokens``.
        billion_params: parameters of the whole model (vision tower included), rounded, from the model card; the
            weights take ``2 ×`` that in GB stored in 16 bits and ``4 ×`` as float32 on a CPU.
    """

    hub_id: str
    arch: ModelArch
    billion_params: float

    def weight_bytes(self, bytes_per_param: int = 2) -> float:
        return self.billion_params * 1e9 * bytes_per_param


class Family:
    """Everything one model family knows (see the module docstring). Subclasses set the class attributes and
    implement :meth:`layout`, :meth:`tiny_model` and, where the family's answers are not plain ``[x1, y1, x2, y2]``,
    :meth:`parse_model_box` / :meth:`format_answer`.

    Class attributes:
        name: the family's name (``"llava"``, …); also its key in the registry and in result files.
        label: for people (``"LLaVA-1.5"``).
        model_types: config ``model_type`` values of this family.
        model_class: the transformers ``*ForConditionalGeneration`` class name.
        tiny_name: the name of its tiny random model (``"tiny-llava"``).
        name_hints: lower-case substrings of hub ids of this family (to guess a stand-in when offline).
        checkpoints: the supported hub checkpoints.
        max_image_pixels: images with more pixels are downscaled (aspect kept) before preprocessing (None: the
            processor caps the size itself, and a downscale first would change its grid).
        min_image_side: images whose shorter side is below this are upscaled first (1: the processor copes).
        grounding_template: the grounding question, ``{expr}`` = the referring expression.
        box_units: model units per frame side of its box numbers (1.0 for 0–1, 1000.0 for 0–1000), None = pixels
            of the frame.
        box_frame: one line saying which image the numbers refer to.
        dynamic_prior_roles: prior roles whose grid changes shape with the image (see :mod:`d2pruner.priors`).
        needs_torchvision: its full processor needs torchvision (else :class:`ProcessorParts` is used).
        feature_injection: see the attribute's comment (the hooks keep such injections exact under pruning).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[str] = ""
    tiny_name: ClassVar[str] = ""
    name_hints: ClassVar[tuple[str, ...]] = ()
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = ()
    max_image_pixels: ClassVar[int | None] = 2048 * 2048
    min_image_side: ClassVar[int] = 28
    grounding_template: ClassVar[str] = (
        "Please provide the bounding box coordinate of the region this sentence describes: {expr}"
    )
    box_units: ClassVar[float | None] = 1.0
    box_frame: ClassVar[str] = ""
    dynamic_prior_roles: ClassVar[frozenset[str]] = frozenset()
    needs_torchvision: ClassVar[bool] = False
    #: name of a decoder method ``(hidden [B, L, D], mask [B, L] bool, features [M, D]) -> hidden`` that adds
    #: per-visual-token features after the first :meth:`injected_layers` layers (Qwen3-VL's DeepStack), or None
    feature_injection: ClassVar[str | None] = None
    #: K of the paper's localization runs (Implementation Details: 2, but 5 for LLaVA-1.5 localization)
    paper_localization_layer: ClassVar[int] = 2

    # ---- anatomy ------------------------------------------------------------------------------------------
    def language_model(self, model) -> torch.nn.Module:
        """The decoder (``.layers``, ``.config``, ``.norm``)."""
        return model.model.language_model

    def image_token_id(self, model) -> int:
        return int(model.config.image_token_id)

    def num_layers(self, model) -> int:
        return len(self.language_model(model).layers)

    def injected_layers(self, model) -> int:
        """How many first decoder layers get features added after them (:attr:`feature_injection`)."""
        return 0

    # ---- preprocessing ------------------------------------------------------------------------------------
    def load_processor(self, name: str) -> tuple[Any, list[str]]:
        """``AutoProcessor.from_pretrained(name)`` (never remote code), and notes. Families that need torchvision
        for their full processor fall back to tokenizer + image processor when it cannot be built, with a note."""
        import transformers

        try:
            return transformers.AutoProcessor.from_pretrained(name, trust_remote_code=False), []
        except (ImportError, OSError, ValueError, TypeError, AttributeError) as err:
            # AttributeError: e.g. a processor that reads a special token its tokenizer config lacks
            if not self.needs_torchvision:
                raise
            parts = ProcessorParts(
                tokenizer=transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=False),
                image_processor=transformers.AutoImageProcessor.from_pretrained(name, trust_remote_code=False),
            )
            return parts, [f"full processor unavailable ({type(err).__name__}); image processor + tokenizer used"]

    def tokenizer(self, processor):
        return processor.tokenizer

    def image_processor(self, processor):
        return getattr(processor, "image_processor", processor)

    def chat_text(self, processor, prompt: str) -> str:
        """The prompt with the family's chat template and one image placeholder."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def build_inputs(self, model, processor, image, prompt: str) -> dict:
        """Model inputs (batch size 1, ``return_tensors="pt"``) for one RGB PIL image and one prompt."""
        return dict(processor(images=image, text=self.chat_text(processor, prompt), return_tensors="pt"))

    def encode_image(self, model, inputs) -> dict:
        """Run the vision tower + projector once: ``{"image": output}`` for ``mm_encoder_outputs=``.

        Passing it (instead of ``pixel_values``) to ``forward`` / ``generate`` reuses the visual features."""
        import inspect

        fn = model.model.get_image_features
        params = inspect.signature(fn).parameters
        names = ("pixel_values", "image_sizes", "image_grid_thw")
        kwargs = {k: inputs[k] for k in names if k in inputs and k in params}
        return {"image": fn(**kwargs, return_dict=True)}

    def merge_encoded(self, encoded: Sequence[dict]) -> dict:
        """The pre-encoded image features of several prompts (:meth:`encode_image`), in row order, as one
        ``mm_encoder_outputs`` for a batch: per-image tensors concatenated, per-image lists joined."""
        first = encoded[0]["image"]
        parts = [e["image"].pooler_output for e in encoded]
        if isinstance(parts[0], torch.Tensor):
            pooled = torch.cat(parts) if len(parts) > 1 else parts[0]
        else:
            pooled = [item for part in parts for item in part]
        return {"image": type(first)(pooler_output=pooled)}

    # ---- token layout -------------------------------------------------------------------------------------
    def layout(self, image_size: tuple[int, int], processor, model) -> VisualLayout:  # pragma: no cover - abstract
        """The :class:`~d2pruner.geometry.VisualLayout` of an image of ``image_size`` (width, height) as this
        model and processor see it."""
        raise NotImplementedError

    def visual_tokens(self, model, inputs: dict, layout: VisualLayout, row: int = 0) -> VisualTokens:
        """Place ``layout`` in row ``row`` of ``inputs["input_ids"]``: the candidate tokens (the layout's grid
        cells) and the protected ones (its newline tokens). The prompt's image tokens must be exactly the layout's
        tokens (a clear error otherwise: the layout arithmetic and the processor disagree)."""
        input_ids = inputs["input_ids"]
        if input_ids.ndim != 2 or not 0 <= row < input_ids.shape[0]:
            raise ValueError(f"input_ids must be [batch, length] with a row {row}; got {tuple(input_ids.shape)}")
        positions = (input_ids[row] == self.image_token_id(model)).nonzero().flatten()
        if positions.numel() == 0:
            raise ValueError("the prompt contains no image tokens")
        if positions.numel() != layout.num_tokens:
            grids = ", ".join(f"{g.name} {g.rows}x{g.cols}" for g in layout.grids)
            raise RuntimeError(
                f"the prompt holds {positions.numel()} image tokens but the {self.label} layout of a "
                f"{layout.image_size[0]}x{layout.image_size[1]} image has {layout.num_tokens} ({grids}); "
                "please report this image size"
            )
        grid_tokens = torch.as_tensor(layout.grid_tokens, dtype=torch.long, device=positions.device)
        newline = torch.as_tensor(layout.newline_tokens, dtype=torch.long, device=positions.device)
        grids, offset = [], 0
        for g in layout.grids:
            grids.append(GridView(g.name, g.rows, g.cols, offset))
            offset += g.rows * g.cols
        return VisualTokens(
            positions=positions[grid_tokens],
            grids=grids,
            protected=positions[newline],
            seq_len=int(input_ids.shape[1]),
        )

    def tokens_for(self, model, processor, image_size: tuple[int, int], inputs: dict, row: int = 0) -> VisualTokens:
        """The visual tokens of row ``row`` of ``inputs`` built from an image of ``image_size`` (width, height):
        :meth:`visual_tokens` of :meth:`layout`."""
        return self.visual_tokens(model, inputs, self.layout(image_size, processor, model), row)

    # ---- priors -------------------------------------------------------------------------------------------
    def prior_role(self, grid_name: str) -> str:
        """The prior map a layout grid uses (InternVL's tiles share one)."""
        return grid_name

    def tile_arrangement(self, layout: VisualLayout) -> tuple[int, int]:
        """(rows, cols) in which the tiles of a tiled layout cover the image; (1, 1) when not tiled."""
        return (1, 1)

    # ---- grounding ----------------------------------------------------------------------------------------
    def grounding_prompt(self, expression: str) -> str:
        """The grounding question about ``expression`` (a referring expression)."""
        return self.grounding_template.format(expr=expression.strip())

    def parse_model_box(self, text: str) -> Box | None:
        """The first box of an answer in the model's own units (no clipping), or None. Default: the first
        bracketed group of four numbers."""
        if not isinstance(text, str) or not text.strip():
            return None
        return first_box(text)

    def format_answer(self, box: Sequence[float], label: str = "object") -> str:
        """A model-units box the way the family answers (for demos and round-trip tests)."""
        return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"

    def parse_box(self, text: str, layout: VisualLayout) -> Box | None:
        """The answer's first box in ORIGINAL image pixels, or None."""
        return self.box_to_original(self.parse_model_box(text), layout)

    def box_to_original(self, box: Sequence[float] | None, layout: VisualLayout) -> Box | None:
        """A box in the model's units → original pixels (clipped to the frame, then to the image), or None."""
        self._check_layout(layout)
        return model_to_original(box, layout, self.box_units)

    def to_model_units(self, box: Sequence[float], layout: VisualLayout) -> Box:
        """An original-pixel box (e.g. a ground truth) in the model's units; no clipping."""
        self._check_layout(layout)
        return original_to_model(box, layout, self.box_units)

    def _check_layout(self, layout: VisualLayout) -> None:
        if layout.family != self.name:
            raise ValueError(f"layout is for {layout.family!r}, not {self.name!r}")

    # ---- tiny model ---------------------------------------------------------------------------------------
    def tiny_model(self, attn_implementation: str) -> tuple[torch.nn.Module, Any]:  # pragma: no cover - abstract
        """A tiny model of the real class (seeded random weights, eval mode, float32) and its preprocessing."""
        raise NotImplementedError

    # ---- checkpoints --------------------------------------------------------------------------------------
    def checkpoint(self, hub_id: str) -> Checkpoint | None:
        low = hub_id.lower()
        return next((c for c in self.checkpoints if c.hub_id.lower() == low), None)


def arch(name: str, layers: int, hidden: int, inter: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
         visual: int) -> ModelArch:
    """A :class:`~d2pruner.efficiency.ModelArch` in one line (the checkpoint tables)."""
    return ModelArch(name, layers, hidden, inter, heads, kv_heads, head_dim, vocab, visual)

