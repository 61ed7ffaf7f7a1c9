#!/usr/bin/env bash
# Extract a driver's motion once, then make every photo in a folder perform it.
#
#   examples/batch_imitate.sh dance.mp4 photos/ results/ [extra imitate options...]
#
# Writes results/<photo>.mp4 for each image and results/summary.jsonl (one JSON line per source).
# A failing source is reported and skipped; the script's exit code is that of the last failure.
set -uo pipefail

driver=${1:?usage: batch_imitate.sh DRIVER_VIDEO PHOTOS_DIR OUT_DIR}
photos=${2:?usage: batch_imitate.sh DRIVER_VIDEO PHOTOS_DIR OUT_DIR}
out=${3:?usage: batch_imitate.sh DRIVER_VIDEO PHOTOS_DIR OUT_DIR}
shift 3
mkdir -p "$out"

motion="$out/$(basename "${driver%.*}").motion.npz"
if [ ! -f "$motion" ]; then
    impersonate motion extract "$driver" -o "$motion" || exit $?
fi

status=0
: > "$out/summary.jsonl"
for photo in "$photos"/*; do
    case "${photo,,}" in *.jpg|*.jpeg|*.png|*.webp) ;; *) continue ;; esac
    name=$(basename "${photo%.*}")
    # --json prints one line on success and on failure ({"error": ...}): append it as it is.
    if ! impersonate imitate -s "$photo" -d "$motion" --audio-file "$driver" -o "$out/$name.mp4" \
            --overwrite --json --quiet "$@" >> "$out/summary.jsonl"; then
        status=$?
        echo "failed ($status): $photo" >&2
    fi
done
exit $status
