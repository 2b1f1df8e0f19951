"""Qwen2-VL / Qwen2.5-VL captions of source images (``--captioner qwen-vl:PATH``).

Loads a local model folder (``config.json`` + weights + tokenizer + image processor; ``save_pretrained``
layout) through transformers, asks the paper's question ("Describe what a person is doing with his or her
hands in the image.", configurable) with greedy decoding and a token limit, in batches (left padding),
bf16 on CUDA (fp16 where bf16 is unsupported), float32 on CPU. The answer is post-processed into a prompt of
at most 77 CLIP tokens (``postprocess.clean_caption``).

Samples without a source image (the pose prior has none) cannot be captioned by a VLM: they get the
label-derived caption instead, and the caption records ``fallback: "no source image"`` (likewise
``fallback: "empty answer"`` when the model's answer has no usable text).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioning.base import Captioner
from captioning.postprocess import clean_caption
from pipeline.errors import HandgenError, one_line
from pipeline.sample import Caption, Sample

logger = logging.getLogger(__name__)

QUESTION = "Describe what a person is doing with his or her hands in the image."
_MANUAL_TEMPLATE = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


class QwenVLError(HandgenError, RuntimeError):
    """A model folder that cannot be used; the message names the folder and the problem."""


def _load_image(src) -> np.ndarray:
    """A source image given as an (H, W, 3) uint8 array or a path -> RGB uint8 array."""
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] not in (3, 4) or src.dtype != np.uint8:
            raise ValueError(f"source image must be (H, W, 3) uint8, got {src.dtype} {src.shape}")
        img = src[..., :3]
    else:
        from pipeline.imaging import load_rgb

        img = load_rgb(src)
    return img if img.flags.writeable else img.copy()  # torch wants writable arrays


class QwenVLCaptioner(Captioner):
    """Captions source images with a local Qwen2-VL or Qwen2.5-VL model (see module doc)."""

    name = "qwen-vl"
    prompt_version = "1"

    @classmethod
    def from_config(cls, config, device: str = "auto", **_) -> QwenVLCaptioner:
        """``captioning.CAPTIONERS``' factory: the model in ``config.path`` (a ``QwenVLCaptionerConfig``)."""
        return cls(config.path, device=device)

    def __init__(
        self,
        path: str | Path,
        question: str = QUESTION,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        device: str = "auto",
        fallback: Captioner | None = None,
        count_tokens=None,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, Qwen2VLVideoProcessor

        path = Path(path)
        if not path.is_dir():
            raise QwenVLError(f"Qwen-VL model folder not found: {path}")
        if not (path / "config.json").is_file():
            raise QwenVLError(f"no Qwen-VL model in {path} (config.json missing)")
        try:
            cfg = AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:  # a broken or foreign config.json
            raise QwenVLError(f"cannot read {path / 'config.json'}: {one_line(exc)}") from exc
        classes = {
            "qwen2_vl": (transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor),
            "qwen2_5_vl": (transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor),
        }
        if cfg.model_type not in classes:
            raise QwenVLError(f"{path} holds a {cfg.model_type!r} model; expected qwen2_vl or qwen2_5_vl")
        model_cls, proc_cls = classes[cfg.model_type]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        try:
            self.model = model_cls.from_pretrained(path, dtype=dtype).to(self.device).eval()
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:  # missing or damaged weights / tokenizer files
            raise QwenVLError(f"cannot load the Qwen-VL model in {path}: {one_line(exc)}") from exc
        tokenizer.padding_side = "left"
        self.processor = proc_cls(
            image_processor=AutoImageProcessor.from_pretrained(path),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=getattr(tokenizer, "chat_template", None),
        )
        self.tokenizer = tokenizer
        self.question, self.max_new_tokens, self.batch_size = question, max_new_tokens, batch_size
        self.path = str(path)
        if fallback is None:
            from captioning.labels import LabelCaptioner

            fallback = LabelCaptioner()
        self.fallback = fallback
        if count_tokens is None:
            from pipeline.tagging import clip_tokenizer

            clip = clip_tokenizer()
            count_tokens = lambda s: len(clip(s)["input_ids"])  # noqa: E731
        self.count_tokens = count_tokens

    def prompt(self) -> str:
        """The chat prompt with one image placeholder and the question."""
        if self.processor.chat_template:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question}]}
            ]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return _MANUAL_TEMPLATE.format(question=self.question)

    def answer(self, images: Sequence[np.ndarray]) -> list[str]:
        """Raw model answers for a list of RGB images (batched, greedy)."""
        import torch

        out: list[str] = []
        prompt = self.prompt()
        for i in range(0, len(images), self.batch_size):
            chunk = [_load_image(im) for im in images[i : i + self.batch_size]]
            inputs = self.processor(
                text=[prompt] * len(chunk), images=chunk, return_tensors="pt", padding=True
            )
            inputs = inputs.to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += self.tokenizer.batch_decode(
                ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
        return out

    def caption(self, samples: Sequence[Sample]) -> list[Caption]:
        result: list[Caption | None] = [None] * len(samples)
        with_image = [i for i, s in enumerate(samples) if s.source_image is not None]
        without = [i for i in range(len(samples)) if samples[i].source_image is None]
        if with_image:
            answers = self.answer([_load_image(samples[i].source_image) for i in with_image])
            for i, raw in zip(with_image, answers, strict=True):
                text = clean_caption(raw, self.count_tokens)
                if text:
                    meta = {"model": self.path, "question": self.question, "raw": raw}
                    result[i] = Caption(text, self.name, self.prompt_version, meta)
                else:
                    without.append(i)
        for i in sorted(without):
            fb = self.fallback.caption([samples[i]])[0]
            reason = "no source image" if samples[i].source_image is None else "empty answer"
            result[i] = Caption(fb.text, fb.captioner, fb.prompt_version, {**fb.meta, "fallback": reason})
            logger.debug("%s: label caption used (%s)", samples[i].key, reason)
        return result  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
