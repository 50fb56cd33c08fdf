"""Opt-in integration tests: the MONAI Label app and the MONAI Deploy app against ``mssn_monai detect``.

Marked ``integration`` (deselected by default; run ``pytest -m integration``). They need the two separate
virtual environments of ``bundle/docs/README.md`` and skip without them: ``MSSN_LABEL_VENV`` (default
``.venvs/label`` in the checkout, made by ``make label-venv``: monailabel 0.8.5 + this package) and
``MSSN_DEPLOY_VENV`` (default ``.venvs/deploy``, made by ``make deploy-venv``: monai-deploy-app-sdk 4.0.0 + this
package); ``make test-integration`` builds both when missing. The ASAP checks with Java's ``DocumentBuilder``
also need ``java`` 11+ on PATH (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from mssn_monai.io import read_image_rgb, write_image

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "bundle" / "samples" / "images"
FIELDS = ("S2027002_03", "S2027005_00")
LABEL_VENV = Path(os.environ.get("MSSN_LABEL_VENV", ROOT / ".venvs" / "label"))
DEPLOY_VENV = Path(os.environ.get("MSSN_DEPLOY_VENV", ROOT / ".venvs" / "deploy"))
TOL = 1e-5
MODEL = "mssn_mitosis"

needs_label = pytest.mark.skipif(
    not (LABEL_VENV / "bin" / "monailabel").exists(), reason=f"no MONAI Label venv at {LABEL_VENV}"
)
needs_deploy = pytest.mark.skipif(
    not (DEPLOY_VENV / "bin" / "python").exists(), reason=f"no MONAI Deploy venv at {DEPLOY_VENV}"
)


def assert_same_detections(got, ref, what: str) -> None:
    """Same points (exactly) and scores within TOL, whatever the order."""
    got = np.asarray(got, dtype=np.float64).reshape(-1, 3)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, 3)
    assert len(ref) > 0, f"{what}: the reference has no detection, nothing to compare"
    got, ref = (a[np.lexsort((a[:, 0], a[:, 1]))] for a in (got, ref))
    assert got.shape == ref.shape, f"{what}: {len(got)} detections, detect found {len(ref)}"
    np.testing.assert_array_equal(got[:, :2], ref[:, :2], err_msg=what)
    np.testing.assert_allclose(got[:, 2], ref[:, 2], rtol=0, atol=TOL, err_msg=what)


def reference(folder: Path, stem: str) -> np.ndarray:
    return np.asarray(json.loads((folder / f"{stem}.json").read_text())["detections"], dtype=np.float64)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two sample fields, their ``detect`` output, model.ts."""
    from mssn_monai.cli import detect

    root = tmp_path_factory.mktemp("integrations")
    fields = root / "fields"
    fields.mkdir()
    for stem in FIELDS:
        shutil.copy(SAMPLES / f"{stem}.png", fields / f"{stem}.png")
    detect(str(fields), str(root / "ref"), device="cpu")
    export = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def"]
    export += ["--filepath", str(root / "model.ts"), "--ckpt_file", str(ROOT / "bundle/models/model.pt")]
    export += ["--meta_file", str(ROOT / "bundle/configs/metadata.json")]
    export += ["--config_file", str(ROOT / "bundle/configs/inference.json")]
    r = subprocess.run(export, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


# ---- MONAI Label ------------------------------------------------------------------------------------


def _post(url: str, fields: dict[str, str] | None = None, timeout: float = 600) -> bytes:
    """POST with an optional multipart form (what the wsi_v2 endpoint reads its ``wsi`` options from)."""
    body, headers = b"", {}
    if fields:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
        ]
        body = ("".join(parts) + f"--{boundary}--\r\n").encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


@contextlib.contextmanager
def _label_server(studies: Path, log_path: Path, conf: dict[str, str] | None = None):
    """A real ``monailabel start_server`` on the app, on a free loopback port: yields ``(url, /info)``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{LABEL_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["MONAILABEL_PYEXE"] = str(LABEL_VENV / "bin" / "python")
    cmd = [str(LABEL_VENV / "bin" / "monailabel"), "start_server", "--app", str(ROOT / "apps" / "monailabel")]
    cmd += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "models", MODEL]
    cmd += ["--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    for k, v in (conf or {}).items():
        cmd += ["--conf", k, v]
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MONAI Label did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        yield url, info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def label_server(work):
    import tifffile

    studies = work / "studies"
    shutil.copytree(work / "fields", studies)
    # a tiled TIFF (what OpenSlide reads as a slide): /infer/wsi cuts it into tiles
    rgb = read_image_rgb(work / "fields" / f"{FIELDS[0]}.png")
    tifffile.imwrite(studies / "slide.tif", rgb, tile=(256, 256), photometric="rgb")
    with _label_server(studies, work / "label_server.log") as server:
        yield server


@needs_label
def test_label_info_lists_the_model(label_server):
    _, info = label_server
    model = info["models"][MODEL]
    assert model["labels"] == {"mitosis": 1} and model["dimension"] == 2 and model.get("pathology") is True
    assert model["config"]["model_filename"] == ["model.pt"]


@needs_label
@pytest.mark.parametrize("stem", FIELDS)
def test_label_infer_json_equals_detect(label_server, work, stem):
    url, _ = label_server
    res = json.loads(_post(f"{url}/infer/{MODEL}?image={stem}&output=json"))
    assert_same_detections(res["detections"], reference(work / "ref", stem), f"MONAI Label /infer {stem}")
    assert res["count"] == len(res["detections"])
    # one disc polygon per mitosis, centred on it
    (annotation,) = [a["annotation"] for a in res["annotations"] if a and a.get("annotation")]
    polygons = [np.asarray(c, dtype=float) for e in annotation["elements"] for c in e["contours"]]
    assert len(polygons) == len(res["detections"])
    centres = np.array([(p[:, 0].min() + p[:, 0].max()) / 2 for p in polygons])
    rows = np.array([(p[:, 1].min() + p[:, 1].max()) / 2 for p in polygons])
    for x, y, _ in res["detections"]:
        assert np.min(np.hypot(centres - x, rows - y)) <= 1.0, (x, y)


@needs_label
def test_label_wsi_v2_gives_polygons_for_qupath_and_dsa(label_server, work):
    url, _ = label_server
    stem = FIELDS[0]
    n = len(reference(work / "ref", stem))
    dsa = json.loads(_post(f"{url}/infer/wsi_v2/{MODEL}?image={stem}&output=dsa", {"wsi": "{}"}))
    assert len(dsa["elements"]) == n
    assert all(e["type"] == "polyline" and e["closed"] and e["group"] == "mitosis" for e in dsa["elements"])
    asap = _post(f"{url}/infer/wsi_v2/{MODEL}?image={stem}&output=asap", {"wsi": "{}"}).decode()
    assert asap.startswith("<?xml") and asap.count('<Annotation Name="mitosis" Type="Polygon"') == n
    root = ET.fromstring(asap.encode())  # a real XML parser: the description's "H&E" must be escaped
    assert "H&E" in root.find("Annotations").get("Description")
    assert len(root.findall("Annotations/Annotation")) == n


@needs_label
def test_label_asap_answers_are_read_by_javas_documentbuilder(label_server, work, tmp_path, java_asap):
    """The server's ASAP XML (a field, and a tiled TIFF) parsed as the QuPath extension parses it: Java's
    ``DocumentBuilder``; one polygon per mitosis of ``detect``, around it."""
    url, _ = label_server
    stem = FIELDS[0]
    ref = reference(work / "ref", stem)
    (tmp_path / "field.xml").write_bytes(_post(f"{url}/infer/wsi_v2/{MODEL}?image={stem}&output=asap", {"wsi": "{}"}))
    got = java_asap(tmp_path / "field.xml")
    assert got.root == "ASAP_Annotations" and "H&E" in got.attrs["Description"]
    assert len(got.annotations) == len(ref) and {a[0] for a in got.annotations} == {"mitosis"}
    boxes = np.array([[*np.min(pts, axis=0), *np.max(pts, axis=0)] for *_, pts in got.annotations])
    for x, y, _ in ref:  # each mitosis inside the bounding box of one polygon
        inside = (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
        assert inside.any(), (x, y)
    wsi = json.dumps({"level": 0, "tile_size": [512, 512], "max_workers": 1})
    (tmp_path / "slide.xml").write_bytes(_post(f"{url}/infer/wsi_v2/{MODEL}?image=slide&output=asap", {"wsi": wsi}))
    assert java_asap(tmp_path / "slide.xml").root == "ASAP_Annotations"


@needs_label
def test_label_wsi_tiles_on_a_cpu_server(label_server, work):
    """A tiled TIFF through /infer/wsi_v2 with tiles on a CPU-only server: no multi-GPU failure, one merged
    top-level ``detections`` list, parseable ASAP XML."""
    url, _ = label_server
    wsi = json.dumps({"level": 0, "tile_size": [512, 512], "max_workers": 1})
    res = json.loads(_post(f"{url}/infer/wsi_v2/{MODEL}?image=slide&output=json", {"wsi": wsi}))
    assert len(res["annotations"]) > 1, "the slide was not cut into tiles"
    tiles = [row for a in res["annotations"] if a for row in a.get("detections", [])]
    assert res["count"] == len(res["detections"]) and len(res["detections"]) == len({(r[0], r[1]) for r in tiles})
    assert all(0 <= x < 1024 and 0 <= y < 1024 for x, y, _ in res["detections"])
    # tiles read with context and normalised with the whole slide's stain statistics: the tile grid changes nothing
    assert_same_detections(res["detections"], reference(work / "ref", FIELDS[0]), "MONAI Label tiles of 512")
    asap = _post(f"{url}/infer/wsi_v2/{MODEL}?image=slide&output=asap", {"wsi": wsi})
    assert ET.fromstring(asap).tag == "ASAP_Annotations"


@needs_label
def test_label_region_request_is_shifted_into_slide_pixels(label_server, work):
    url, _ = label_server
    wsi = json.dumps({"location": [512, 0], "size": [512, 640]})
    res = json.loads(_post(f"{url}/infer/wsi_v2/{MODEL}?image={FIELDS[1]}&output=json", {"wsi": wsi}))
    assert res["location"] == [512, 0] and res["size"] == [512, 640]
    whole = reference(work / "ref", FIELDS[1])  # a region is read with context: the whole field's detections there
    ref = whole[(whole[:, 0] >= 512) & (whole[:, 1] < 640)]
    assert_same_detections(res["detections"], ref, "MONAI Label region request")


# ---- MONAI Label as an active-learning server: labels in, /train, /activelearning --------------------


def _put_label(url: str, image: str, filename: str, content: bytes) -> tuple[int, dict]:
    """``PUT /datastore/label?image=..&tag=final`` with a multipart ``label`` file: (HTTP status, JSON)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{url}/datastore/label?image={image}&tag=final",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="PUT",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _geojson_points(points, name: str = "Mitotic figure") -> bytes:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
            "properties": {"classification": {"name": name}},
        }
        for x, y, *_ in points
    ]
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def _asap_polygons(points, name: str = "mitosis", r: float = 5.0) -> bytes:
    shapes = []
    for x, y, *_ in points:
        corners = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
        coords = "".join(f'<Coordinate Order="{i}" X="{cx}" Y="{cy}"/>' for i, (cx, cy) in enumerate(corners))
        shapes.append(
            f'<Annotation Name="m" Type="Polygon" PartOfGroup="{name}"><Coordinates>{coords}</Coordinates></Annotation>'
        )
    body = "".join(shapes)
    return f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{body}</Annotations></ASAP_Annotations>'.encode()


@needs_label
def test_label_server_labels_train_and_active_learning(tmp_path):
    """Two small labelled fields (GeoJSON points, ASAP polygons) and one unlabelled: a bad label is refused,
    /train (1 epoch) runs to completion as version v0001, /infer then serves it, and
    /activelearning/mitosis_uncertainty names the unlabelled field."""
    from mssn_monai.cli import detect

    studies, versions = tmp_path / "studies", tmp_path / "versions"
    crops = {"a": (FIELDS[1], 0, 512), "b": (FIELDS[0], 0, 512), "c": (FIELDS[0], 512, 0)}
    for stem, (field, y, x) in crops.items():
        write_image(studies / f"{stem}.png", read_image_rgb(SAMPLES / f"{field}.png")[y : y + 512, x : x + 512])
    detect(str(studies), str(tmp_path / "ref"), device="cpu")
    refs = {stem: reference(tmp_path / "ref", stem) for stem in crops}
    shutil.rmtree(studies / ".monailabel", ignore_errors=True)
    for f in studies.iterdir():  # keep only the images
        if f.suffix != ".png":
            f.unlink() if f.is_file() else shutil.rmtree(f)
    assert len(refs["a"]) + len(refs["b"]) > 0, "the labelled crops hold no mitosis to learn from"

    with _label_server(studies, tmp_path / "server.log", {"versions_dir": str(versions)}) as (url, info):
        assert MODEL in info["trainers"] and "mitosis_uncertainty" in info["strategies"]
        assert "random" in info["strategies"] and "mitosis_uncertainty" in info["scoring"]

        # a bad label: one clear error (response and log), nothing stored
        status, body = _put_label(url, "b", "b.json", b'{"type": "Feature", "geometry": null}')
        assert status == 422 and "bad label file for image 'b'" in body["detail"], body
        assert "bad label file for image 'b'" in (tmp_path / "server.log").read_text()
        assert not list((studies / "labels" / "final").glob("b.*")) if (studies / "labels").exists() else True

        assert _put_label(url, "a", "a.geojson", _geojson_points(refs["a"]))[0] == 200
        assert _put_label(url, "b", "b.xml", _asap_polygons(refs["b"]))[0] == 200
        with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=30) as r:
            objects = json.loads(r.read())["objects"]
        assert sorted(k for k, v in objects.items() if v.get("labels", {}).get("final")) == ["a", "b"]

        before = json.loads(_post(f"{url}/infer/{MODEL}?image=a&output=json"))
        train = {"epochs": 1, "device": "cpu", "samples_per_epoch": 64}
        req = urllib.request.Request(
            f"{url}/train/{MODEL}", data=json.dumps(train).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
        deadline = time.monotonic() + 1200
        while True:
            with urllib.request.urlopen(f"{url}/train/?check_if_running=false", timeout=30) as r:
                task = json.loads(r.read())
            if task.get("status") in ("DONE", "ERROR") or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert task["status"] == "DONE", "\n".join(task.get("details", []))[-4000:]
        assert (versions / "v0001" / "models" / "model.pt").is_file()
        report = json.loads((versions / "v0001" / "adapt_report.json").read_text())
        assert report["fields"] == 2 and report["epochs"] == 1 and report["mitoses"] == len(refs["a"]) + len(refs["b"])

        # /infer serves the new version at once: it equals detect with the new bundle
        after = json.loads(_post(f"{url}/infer/{MODEL}?image=c&output=json"))
        detect(str(studies / "c.png"), str(tmp_path / "ref_v1"), bundle=str(versions / "v0001"), device="cpu")
        v1 = reference(tmp_path / "ref_v1", "c")
        if len(v1):
            assert_same_detections(after["detections"], v1, "/infer after /train")
        else:
            assert after["detections"] == []
        assert isinstance(before["detections"], list)
        with urllib.request.urlopen(f"{url}/info/", timeout=30) as r:
            assert json.loads(r.read())["train_stats"][MODEL]["version"] == "v0001"

        # active learning: the one unlabelled field, by uncertainty
        res = json.loads(_post(f"{url}/activelearning/mitosis_uncertainty"))
        assert res["id"] == "c", res
        assert res["uncertainty"] >= 0


def _submit_labels(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "submit_labels.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


@needs_label
def test_submit_labels_sends_a_qupath_point_export(label_server, work, tmp_path):
    """``scripts/submit_labels.py`` (the route for mitoses marked as points, which the QuPath extension does not
    send): a QuPath GeoJSON export (a plain list of features: points, a multipoint of mimics, an unclassified
    region) is stored as the field's final label; bad files and an unknown image are refused, nothing stored."""
    url, _ = label_server
    stem, other = FIELDS[1], FIELDS[0]
    final = work / "studies" / "labels" / "final"
    ref = reference(work / "ref", stem)
    features = [
        {
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Mitotic figure", "color": [255, 0, 0]},
            },
        }
        for x, y, _ in ref
    ]
    features.append(
        {
            "type": "Feature",
            "geometry": {"type": "MultiPoint", "coordinates": [[10.0, 20.0], [30.5, 40.5]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Non-mitotic figure"}},
        }
    )
    features.append(
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [99, 0], [99, 99], [0, 0]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        }
    )
    export = tmp_path / f"{stem}.png.geojson"  # QuPath names an export after the image, extension included
    export.write_text(json.dumps(features))

    # refused, nothing stored: no mitosis/mimic class, not JSON, an image the server does not have
    only_tumour = tmp_path / f"{other}.geojson"
    only_tumour.write_text(json.dumps(features[-1:]))
    r = _submit_labels(str(only_tumour), "--server", url)
    assert r.returncode == 2 and "no shape classified as a mitosis or a mimic (Tumor: 1)" in r.stderr, r.stderr
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    r = _submit_labels(str(tmp_path / "broken.geojson"), "--server", url, "--image", other)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: bad label file"), r.stderr
    r = _submit_labels(str(export), "--server", url, "--image", "no_such_field")
    assert r.returncode == 2 and "image 'no_such_field' is not in the server's datastore" in r.stderr, r.stderr
    assert not list(final.glob(f"{other}.*")) and not list(final.glob(f"{stem}.*"))

    r = _submit_labels(str(export), "--server", url)
    assert r.returncode == 0, r.stderr
    assert f"{len(ref)} mitoses, 2 mimics (ignored: Tumor 1) submitted as the final label of image '{stem}'" in r.stdout
    with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=30) as resp:
        objects = json.loads(resp.read())["objects"]
    assert objects[stem]["labels"].get("final") and not objects[other].get("labels", {}).get("final")
    (stored,) = final.glob(f"{stem}.*")
    assert stored.read_bytes() == export.read_bytes()


# ---- MONAI Deploy -----------------------------------------------------------------------------------


def _run_deploy(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(DEPLOY_VENV / "bin" / "python"), "app.py", *args],
        cwd=ROOT / "apps" / "deploy",
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


@needs_deploy
def test_deploy_app_with_torchscript_equals_detect(work):
    inputs = work / "deploy_in"
    shutil.copytree(work / "fields", inputs)
    tif = inputs / f"{FIELDS[0]}_tif.tif"  # a TIFF field too
    write_image(tif, read_image_rgb(inputs / f"{FIELDS[0]}.png"))
    out = work / "deploy_out"
    _run_deploy(["-i", str(inputs), "-o", str(out), "-m", str(work / "model.ts")])
    for stem in (*FIELDS, tif.stem):
        ref = reference(work / "ref", stem.removesuffix("_tif"))
        summary = json.loads((out / f"{stem}.json").read_text())
        assert_same_detections(summary["detections"], ref, f"MONAI Deploy {stem}")
        csv = np.loadtxt(out / f"{stem}.csv", delimiter=",", ndmin=2)
        assert_same_detections(csv, ref, f"MONAI Deploy {stem}.csv")
        assert summary["settings"]["stain_normalization"] is True and summary["settings"]["operating_threshold"] > 0
        assert json.loads((out / f"{stem}.geojson").read_text())["type"] == "FeatureCollection"
        discs = read_image_rgb(out / f"{stem}_discs.png")[..., 0]
        assert discs.shape == (1024, 1024) and set(np.unique(discs)) == {0, 255}
        for x, y, _ in ref:
            assert discs[int(y), int(x)] == 255


@needs_deploy
def test_deploy_app_with_bundle_folder_and_holoscan_env(work):
    out = work / "deploy_env_out"
    env = {
        "HOLOSCAN_INPUT_PATH": str(work / "fields" / f"{FIELDS[1]}.png"),
        "HOLOSCAN_OUTPUT_PATH": str(out),
        "HOLOSCAN_MODEL_PATH": str(ROOT / "bundle"),
    }
    _run_deploy([], env)
    summary = json.loads((out / f"{FIELDS[1]}.json").read_text())
    assert_same_detections(summary["detections"], reference(work / "ref", FIELDS[1]), "MONAI Deploy bundle folder")
