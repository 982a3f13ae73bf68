"""pixparse's page preprocessing as a transformers image processor (shipped inside every Hugging
Face export; it needs torch, torchvision and PIL, never pixparse).

A page is converted to the model's mode (gray 'L' or 'RGB'), resized with its aspect ratio kept to
fit (height, width) (antialiased bicubic on uint8, as pixparse's loader does), placed top-left on a
white canvas of that size and normalized: (pixel - 255 * mean) / (255 * std). Load it with
`AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)`.
"""
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class PixparseImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, size: dict[str, int] | None = None, image_mode: str = "L",
                 image_mean: list[float] | None = None, image_std: list[float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = dict(size or {"height": 384, "width": 288})
        self.image_mode = image_mode
        channels = 1 if image_mode == "L" else 3
        self.image_mean = list(image_mean or [0.5] * channels)
        self.image_std = list(image_std or [0.5] * channels)

    def resize_pad(self, image: Image.Image) -> torch.Tensor:
        """One page -> (C, H, W) uint8: fit, top-left, white padding."""
        height, width = self.size["height"], self.size["width"]
        w, h = image.size
        scale = min(height / h, width / w)
        new_w, new_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
        if image.mode != self.image_mode:
            image = image.convert(self.image_mode)
        x = TF.pil_to_tensor(image)
        if (new_h, new_w) != tuple(x.shape[1:]):
            x = TF.resize(x, [new_h, new_w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        canvas = torch.full((x.shape[0], height, width), 255, dtype=torch.uint8)
        canvas[:, :new_h, :new_w] = x
        return canvas

    def preprocess(self, images: Image.Image | list[Image.Image], return_tensors: str | None = "pt",
                   **kwargs: Any) -> BatchFeature:
        if isinstance(images, Image.Image):
            images = [images]
        pages = torch.stack([self.resize_pad(image) for image in images])
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.image_std).view(1, -1, 1, 1) * 255
        return BatchFeature({"pixel_values": (pages.float() - mean) / std}, tensor_type=return_tensors)
