"""Code shipped inside Hugging Face exports (the image processor and processor): it never imports pixparse."""
