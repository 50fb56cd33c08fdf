#!/usr/bin/env bash
# Opt-in check (not run by CI): the MONAI Label app and the MONAI Deploy app give the same detections as
# `python -m mssn_monai detect` on the bundle's sample fields. Prints PASS/FAIL per app and the time each takes;
# exits non-zero when a check fails.
#
# Needs the two separate virtual environments described in bundle/docs/README.md:
#   MSSN_LABEL_VENV  (default .venvs/label):  `make label-venv` (monailabel 0.8.5 without sam2, the CPU torch
#                                             of constraints.txt, this package with --no-deps)
#   MSSN_DEPLOY_VENV (default .venvs/deploy): monai-deploy-app-sdk 4.0.0 + this package
# and the main environment (PYTHON, default .venv/bin/python) for the reference run and the TorchScript export.
#
# Usage: scripts/check_integrations.sh [image ...]     (default: two of bundle/samples/images)
# Options (environment): PORT (default: a free port on 127.0.0.1), KEEP=1 (keep the work folder), WORK=<dir>.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
LABEL_VENV=$(realpath -m "${MSSN_LABEL_VENV:-$ROOT/.venvs/label}")
DEPLOY_VENV=$(realpath -m "${MSSN_DEPLOY_VENV:-$ROOT/.venvs/deploy}")
TOL=${TOL:-1e-5}

if [ $# -gt 0 ]; then IMAGES=("$@"); else
  IMAGES=("$ROOT/bundle/samples/images/S2027002_03.png" "$ROOT/bundle/samples/images/S2027005_00.png")
fi
for v in "$LABEL_VENV" "$DEPLOY_VENV"; do
  [ -x "$v/bin/python" ] || { echo "SKIP: no virtual environment at $v (make label-venv; see bundle/docs/README.md)"; exit 2; }
done
[ -x "$PYTHON" ] || { echo "SKIP: no main environment python at $PYTHON"; exit 2; }

WORK=${WORK:-$(mktemp -d -t mssn_integrations.XXXXXX)}
mkdir -p "$WORK/fields"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] && echo "work folder kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
for f in "${IMAGES[@]}"; do cp "$f" "$WORK/fields/"; done
now() { date +%s.%N; }
secs() { "$PYTHON" -c "print(f'{$2 - $1:.1f}')"; }

# compare REF_DIR KIND RESULT... : every result's detections equal the reference (same points, scores within TOL)
compare() {
  "$PYTHON" - "$@" <<'PY'
import json, sys
from pathlib import Path
import numpy as np

ref_dir, kind, results, tol = Path(sys.argv[1]), sys.argv[2], sys.argv[3:], float(__import__("os").environ["TOL"])
ok = True
for res in map(Path, results):
    stem = res.stem
    ref = np.asarray(json.loads((ref_dir / f"{stem}.json").read_text())["detections"], dtype=float).reshape(-1, 3)
    if kind == "label":
        r = json.loads(res.read_text())
        got = np.asarray(r["detections"], dtype=float).reshape(-1, 3)
        polys = sum(len(e["contours"]) for a in r["annotations"] if a and a.get("annotation")
                    for e in a["annotation"]["elements"])
        extra = f", {polys} polygons"
        ok &= polys == len(got)
    else:  # deploy: the JSON summary written beside the CSV
        got = np.asarray(json.loads(res.read_text())["detections"], dtype=float).reshape(-1, 3)
        extra = ""
    order = lambda a: a[np.lexsort((a[:, 0], a[:, 1]))]
    same_points = len(got) == len(ref) and np.array_equal(order(got)[:, :2], order(ref)[:, :2])
    max_diff = float(np.abs(order(got)[:, 2] - order(ref)[:, 2]).max()) if same_points and len(ref) else 0.0
    good = same_points and max_diff <= tol
    ok &= good
    print(f"  {kind} {stem}: {len(got)} detections vs {len(ref)} from detect{extra}; "
          f"points {'equal' if same_points else 'DIFFER'}; max |score diff| {max_diff:.2e} -> {'ok' if good else 'MISMATCH'}")
sys.exit(0 if ok else 1)
PY
}
export TOL

echo "== work folder $WORK; fields: ${IMAGES[*]##*/}"
t0=$(now)
"$PYTHON" -m monai.bundle ckpt_export network_def --filepath "$WORK/model.ts" --ckpt_file bundle/models/model.pt \
  --meta_file bundle/configs/metadata.json --config_file bundle/configs/inference.json > "$WORK/export.log" 2>&1 \
  || { echo "FAIL: TorchScript export (see $WORK/export.log)"; KEEP=1; exit 1; }
"$PYTHON" -m mssn_monai detect --input "$WORK/fields" --out "$WORK/ref" > "$WORK/detect.log" 2>&1 \
  || { echo "FAIL: reference detect (see $WORK/detect.log)"; KEEP=1; exit 1; }
echo "== reference: export model.ts + mssn_monai detect: $(secs "$t0" "$(now)") s"
grep "mitoses" "$WORK/detect.log" | sed 's/^/  /'

STATUS=0
# ---- MONAI Label -------------------------------------------------------------------------------------
t0=$(now)
LABEL_OK=1
PORT=${PORT:-$("$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")}
URL="http://127.0.0.1:$PORT"
PATH="$LABEL_VENV/bin:$PATH" MONAILABEL_PYEXE="$LABEL_VENV/bin/python" "$LABEL_VENV/bin/monailabel" start_server \
  --app "$ROOT/apps/monailabel" --studies "$WORK/fields" --host 127.0.0.1 --port "$PORT" \
  --conf models mssn_mitosis --conf zoo_source github --conf sam2 false > "$WORK/label_server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 180); do
  curl -sf "$URL/info/" -o "$WORK/label_info.json" && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 1
done
if [ -s "$WORK/label_info.json" ]; then
  echo "== MONAI Label: /info/ after $(secs "$t0" "$(now)") s; models: $("$PYTHON" -c "import json,sys; print(list(json.load(open(sys.argv[1]))['models']))" "$WORK/label_info.json")"
  mkdir -p "$WORK/label"
  for f in "${IMAGES[@]}"; do  # not fields/*: the server adds its datastore files there
    id=$(basename "${f%.*}")
    curl -sf --max-time 600 -X POST "$URL/infer/mssn_mitosis?image=$id&output=json" -o "$WORK/label/$id.json" \
      || { echo "  /infer/mssn_mitosis?image=$id failed"; LABEL_OK=0; }
  done
  compare "$WORK/ref" label "$WORK"/label/*.json || LABEL_OK=0
  # whole-slide-style requests (QuPath / DSA): polygons, one per mitosis
  id=$(basename "${IMAGES[0]%.*}")
  for out in dsa asap; do
    curl -sf --max-time 600 -X POST "$URL/infer/wsi_v2/mssn_mitosis?image=$id&output=$out" -o "$WORK/label/$id.wsi.$out" \
      || { echo "  /infer/wsi_v2/mssn_mitosis?image=$id&output=$out failed"; LABEL_OK=0; }
  done
  n_ref=$("$PYTHON" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['detections']))" "$WORK/ref/$id.json")
  n_dsa=$("$PYTHON" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['elements']))" "$WORK/label/$id.wsi.dsa" 2>/dev/null || echo "?")
  n_asap=$(grep -c "<Annotation " "$WORK/label/$id.wsi.asap" 2>/dev/null || echo "?")
  echo "  wsi_v2 $id: DSA JSON $n_dsa polygons, ASAP XML $n_asap polygons, detect $n_ref mitoses"
  [ "$n_dsa" = "$n_ref" ] && [ "$n_asap" = "$n_ref" ] || LABEL_OK=0
else
  echo "  the server did not answer /info/ (see $WORK/label_server.log)"; LABEL_OK=0
fi
kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
if [ "$LABEL_OK" = 1 ]; then echo "PASS: MONAI Label app ($(secs "$t0" "$(now)") s)"; else
  echo "FAIL: MONAI Label app ($(secs "$t0" "$(now)") s; server log $WORK/label_server.log)"; STATUS=1; KEEP=1; fi

# ---- MONAI Deploy ------------------------------------------------------------------------------------
t0=$(now)
if (cd apps/deploy && "$DEPLOY_VENV/bin/python" app.py -i "$WORK/fields" -o "$WORK/deploy" -m "$WORK/model.ts") \
  > "$WORK/deploy.log" 2>&1 && compare "$WORK/ref" deploy "$WORK"/deploy/*.json \
  && [ "$(ls "$WORK"/deploy/*_discs.png | wc -l)" = "${#IMAGES[@]}" ]; then
  echo "PASS: MONAI Deploy app ($(secs "$t0" "$(now)") s)"
else
  echo "FAIL: MONAI Deploy app ($(secs "$t0" "$(now)") s; log $WORK/deploy.log)"; STATUS=1; KEEP=1
fi
exit $STATUS
