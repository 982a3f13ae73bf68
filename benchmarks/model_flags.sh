# Sourced by the learning and reading checks: the model flags and family of the run.
#   INIT_FROM=<checkpoint or export> (with IMAGE_SIZE="[H, W]" for another input size) starts from
#   a pretrained model; otherwise PRESET is built from scratch.
# Sets MODEL (an array of training flags) and FAMILY (cruller, pix2struct or pali).
if [ -n "${INIT_FROM:-}" ]; then
  MODEL=(--task.init_from "$INIT_FROM" ${IMAGE_SIZE:+--task.image_size "$IMAGE_SIZE"})
  FAMILY=$(python -c "from pixparse.models.export import read_source; print(read_source('$INIT_FROM')[0].type)")
else
  MODEL=(--task.model_name "$PRESET")
  FAMILY=$(python -c "from pixparse.models.registry import get_model_config as g; print(g('$PRESET').type)")
fi
