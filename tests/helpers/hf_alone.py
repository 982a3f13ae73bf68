"""Run a pixparse Hugging Face export with transformers alone (pixparse cannot be imported):
python hf_alone.py EXPORT_DIR OUT.pt IMAGE... -> {'pixel_values', 'texts', 'pipeline'} saved to OUT.pt (texts from generate() and from
pipeline('image-text-to-text'))."""
import sys

sys.modules["pixparse"] = None  # any import of pixparse fails

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, VisionEncoderDecoderModel, pipeline  # noqa: E402


def main(folder: str, out: str, paths: list[str]) -> None:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    pixels, texts = [], []
    for path in paths:
        inputs = processor(images=Image.open(path))
        with torch.no_grad():
            ids = model.generate(**inputs)  # the export's generation config: greedy, the trained length
        pixels.append(inputs["pixel_values"])
        texts += processor.batch_decode(ids[:, inputs["decoder_input_ids"].shape[1]:])
    reader = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    piped = [reader(images=Image.open(path), text=processor.prompt, return_full_text=False)[0]["generated_text"]
             for path in paths]
    fields = processor.to_fields("<s_company>ACME</s_company><s_total>9.00</s_total>")
    torch.save({"pixel_values": torch.cat(pixels), "texts": texts, "pipeline": piped, "fields": fields}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
