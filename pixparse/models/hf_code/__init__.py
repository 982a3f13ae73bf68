"""Code shipped inside Hugging Face exports: the image processor, the processor and the field-token
format they parse (fields.py, also what pixparse's key-field tasks use). It never imports pixparse."""
