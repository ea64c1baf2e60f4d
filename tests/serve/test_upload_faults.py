"""Damaged and hostile uploads (issue 23): mutated PNG chunks and DICOM elements of real
radiographs and phantoms never get a 500, only a 4xx naming the upload; a held upload is
dropped after the body timeout (a real uvicorn server and socket); a blank image is warned
about; /docs and /redoc load nothing from outside the server."""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import png_as_dicom
from upload_mutations import dicom_mutations, jpeg_mutations, png_mutations

from cxrfuse.data.dicom import window_to_gray8
from cxrfuse.data.images import scale16_to8
from cxrfuse.serve import Limits, Service, create_app

SHARED_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "iu-nih-pairs" / "images"


@pytest.fixture(scope="module")
def service(served_run: Path) -> Service:
    return Service(served_run)


@pytest.fixture(scope="module")
def client(service: Service) -> TestClient:
    return TestClient(create_app(service=service, limits=Limits(max_request_bytes=4_000_000)))


def post(client: TestClient, name: str, data: bytes, **form: str):
    return client.post("/v1/predict", files=[("images", (name, data, "application/octet-stream"))],
                       data={"indication": "Cough.", "draft": "false", **form})  # fmt: skip


def as_jpeg(path: str | Path) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.open(path).convert("L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def fuzz(client: TestClient, sources: dict[str, bytes], seed: int) -> Counter:
    """Every mutation of every source uploaded once: the status codes; a 500 or a 4xx whose
    message does not name the upload (on one line) fails the test with the mutation."""
    rng, statuses = random.Random(seed), Counter()
    for source, data in sources.items():
        kind = source.rsplit(".", 1)[-1]
        mutate = {"dcm": dicom_mutations, "png": png_mutations, "jpg": jpeg_mutations}[kind]
        mutations = mutate(data, rng)
        for n, (label, mutated) in enumerate(mutations):
            name = f"m{n}.{kind}"
            answer = post(client, name, mutated)
            statuses[answer.status_code] += 1
            assert answer.status_code < 500, (source, label, answer.text)
            if answer.status_code != 200:
                message = answer.json()["error"]
                assert message.startswith(f"{name}: ") and "\n" not in message, (source, label, message)
    return statuses


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's on each damaged element
def test_mutated_phantom_uploads_never_get_a_500(client: TestClient, test_study: dict) -> None:
    png = Path(test_study["frontal"]).read_bytes()
    statuses = fuzz(client, {"phantom.png": png, "phantom.jpg": as_jpeg(test_study["frontal"]),
                             "phantom.dcm": png_as_dicom(test_study["frontal"], window=(2000, 4000))}, 0)
    assert sum(statuses.values()) >= 150 and statuses[400] >= 100, statuses
    assert statuses[200] >= 10, statuses  # harmless mutations (a bad IDAT CRC) still predict


@pytest.mark.skipif(not SHARED_IMAGES.exists(), reason="shared real data absent")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_real_radiographs_never_get_a_500(client: TestClient) -> None:
    path = min(SHARED_IMAGES.rglob("*.png"))
    statuses = fuzz(client, {"real.png": path.read_bytes(), "real.jpg": as_jpeg(path),
                             "real.dcm": png_as_dicom(str(path), window=(2000, 4000))}, 1)
    assert sum(statuses.values()) >= 150 and statuses[400] >= 100, statuses


def noise_png(side: int = 400) -> bytes:
    """A PNG of fixed noise, large enough for Pillow to write several IDAT chunks."""
    import io

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("label", "expected"), [
    ("IDAT#1 length long", "damaged PNG file (SyntaxError: broken PNG file"),
    ("IDAT#1 cut in the middle", "image file is truncated"),
    ("IHDR 10^10 pixels", "exceeds limit"),
    ("IHDR#0 bad CRC", "not a readable PNG file (cannot identify image file)"),
])  # fmt: skip
def test_named_png_faults_are_400(client: TestClient, label: str, expected: str) -> None:
    mutated = dict(png_mutations(noise_png(), random.Random(0)))
    answer = post(client, "chunk.png", mutated[label])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("chunk.png: ") and expected in answer.json()["error"]


@pytest.mark.parametrize(("label", "expected"), [
    ("Rows of two values", "DICOM element Rows holds 2 values (512\\512); one is expected"),
    ("(0028,0010) unknown VR", "Unknown Value Representation 'ZZ'"),
    ("Rows of one byte (odd length)", "BytesLengthException"),
    ("(0028,0011) odd length +1", "not a readable DICOM file"),
    ("no pixel data", "DICOM file without pixel data"),
    ("Photometric of two values", "PhotometricInterpretation holds 2 values"),
    ("RescaleSlope not a number", "rescale or window"),
])  # fmt: skip
def test_named_dicom_faults_are_400(client: TestClient, test_study: dict, label: str, expected: str) -> None:
    dicom = png_as_dicom(test_study["frontal"], window=(2000, 4000))
    mutated = dict(dicom_mutations(dicom, random.Random(0)))
    answer = post(client, "view.dcm", mutated[label])
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]
    assert message.startswith("view.dcm: ") and expected in message, message


def test_blank_image_gets_a_warning_and_no_invented_draft(client: TestClient) -> None:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 300), 77, np.uint8)).save(buffer, format="PNG")
    answer = post(client, "blank.png", buffer.getvalue(), draft="true")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert any(w.startswith("blank.png: blank image (every pixel the model reads is 77)")
               for w in body["warnings"]), body["warnings"]  # fmt: skip
    assert body["report_draft"] is None
    assert "no draft report: every view the model read is blank" in body["warnings"]


def test_a_real_image_gets_no_blank_warning(client: TestClient, test_study: dict) -> None:
    answer = post(client, "f.png", Path(test_study["frontal"]).read_bytes())
    assert answer.status_code == 200 and not any("blank" in w for w in answer.json()["warnings"])


@pytest.mark.parametrize("field", ["report", "indication", "comparison"])
def test_text_fields_over_the_cap_are_refused(client: TestClient, test_study: dict, field: str) -> None:
    answer = post(client, "f.png", Path(test_study["frontal"]).read_bytes(), **{field: "x" * 20_001})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith(f"{field}: String should have at most 20000 characters")


def test_sixteen_bit_scaling_matches_the_wide_formula() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(-5, 70000, size=(700, 33)).astype(np.int32)
    pixels[0, :4] = [0, 65535, 128, 129]
    expected = ((pixels.astype(np.int64).clip(0, 65535) + 128) // 257).astype(np.uint8)
    assert np.array_equal(scale16_to8(pixels), expected)
    assert np.array_equal(scale16_to8(pixels.clip(0, 65535).astype(np.uint16)), expected)


@pytest.mark.parametrize("invert", [False, True])
def test_dicom_window_in_place_matches_the_formula(invert: bool) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(1000, 300, size=(64, 80))
    scaled = (values - values.min()) / (values.max() - values.min())
    expected = np.round(((1.0 - scaled) if invert else scaled) * 255.0).astype(np.uint8)
    assert np.array_equal(window_to_gray8(values.copy(), invert=invert), expected)
    assert not window_to_gray8(np.full((4, 4), 7.0)).any()  # a flat image is black, not NaN


# ----------------------------------------------------------------------------- offline docs
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(client: TestClient, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200
    assert not EXTERNAL.search(html.text), html.text
    assert "cdn" not in html.text.lower() and "fonts.googleapis" not in html.text
    assert "validator.swagger.io" not in html.text
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
    assets += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html.text)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
    assert json.loads(client.get("/openapi.json").text)["info"]["title"] == "cxrfuse"


# ----------------------------------------------------------------------------- held uploads
@pytest.fixture
def live_server(service: Service) -> Iterator[int]:
    """The app under a real uvicorn server (body timeout 1 s) on a free local port."""
    import uvicorn

    app = create_app(service=service, limits=Limits(body_timeout_s=1.0, max_pending_bodies=2))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # a loaded 2-core machine starts it slowly
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_held_upload_is_dropped_after_the_body_timeout(live_server: int) -> None:
    """A client that sends its headers and trickles the body gets 408 after the timeout (1 s
    here) and its connection closed, instead of holding the server's memory while it waits."""
    with socket.create_connection(("127.0.0.1", live_server), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
        start, received = time.monotonic(), b""
        sock.settimeout(0.2)
        while time.monotonic() - start < 20:
            try:
                sock.sendall(b"x")  # one byte every 0.2 s: never complete
            except OSError:  # closed by the server: read what it answered before closing
                sock.settimeout(2)
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(65536):
                        received += chunk
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset after the answer
                break
            if not chunk:
                break
            received += chunk
        elapsed = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"request body not complete within 1 s" in received
    assert 0.9 < elapsed < 15, elapsed  # dropped after ~1 s (a loaded machine adds some)


def test_held_uploads_beyond_the_bound_get_503_at_once(live_server: int) -> None:
    """Two uploads held open (the bound here) pin their bodies; a third gets 503 at once, and
    GET requests still answer, so held uploads cannot pile up memory past the bound."""
    import httpx

    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
    held = [socket.create_connection(("127.0.0.1", live_server), timeout=10) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(head)
        time.sleep(0.3)  # both bodies are being received
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", live_server), timeout=10) as third:
            third.sendall(head.removesuffix(b"--b\r\n"))  # headers only: nothing left unread
            answer = b""
            with contextlib.suppress(ConnectionResetError):  # closed with our body unread
                while chunk := third.recv(65536):  # the server closes after its answer
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"2 uploads are being received" in answer and time.monotonic() - start < 0.9
        assert httpx.get(f"http://127.0.0.1:{live_server}/health", timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_an_upload_in_time_is_answered(live_server: int, test_study: dict) -> None:
    import httpx

    data = Path(test_study["frontal"]).read_bytes()
    answer = httpx.post(f"http://127.0.0.1:{live_server}/v1/predict", timeout=120,
                        files=[("images", ("f.png", data, "image/png"))], data={"draft": "false"})  # fmt: skip
    assert answer.status_code == 200, answer.text
