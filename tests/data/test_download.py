"""PhysioNet download against a local HTTP server (with Range support) serving the shared PTB-XL copy."""

import http.server
import os
import shutil
import subprocess
import sys
import threading
from functools import partial

import pytest

from sediff_jax.data.download import ChecksumError, DownloadError, download_physionet, parse_sums, sha256_of


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus 'Range: bytes=N-' (206 Partial Content), which SimpleHTTPRequestHandler lacks."""

    ranges: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        header = self.headers.get("Range")
        if not header or not os.path.isfile(path):
            return super().do_GET()
        start = int(header.split("=")[1].split("-")[0])
        type(self).ranges.append((os.path.basename(path), start))
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read()
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{start + len(body)}")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve():
    servers = []

    def start(directory):
        RangeHandler.ranges = []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def mirror(data_dir, tmp_path):
    """A PhysioNet-like folder: the shared records100 (linked) with PhysioNet's own checksums, and the metadata
    files with recomputed ones (the shared ptbxl_database.csv is cut to 500 rows, and its LICENSE.txt differs
    from the published one, so PhysioNet's hashes of those two do not match them)."""
    root = tmp_path / "mirror"
    root.mkdir()
    os.symlink(data_dir / "ptb-xl" / "records100", root / "records100")
    lines = []
    for line in (data_dir / "ptb-xl" / "SHA256SUMS.txt").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        if rel.startswith("records100/"):
            lines.append(line)
        elif not rel.startswith("records"):
            shutil.copy(data_dir / "ptb-xl" / rel, root / rel)
            lines.append(f"{sha256_of(str(root / rel))} {rel}")
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")
    return root


def first_records(path: str) -> bool:
    """The metadata and records 1-20 at 100 Hz: enough to exercise the layout quickly."""
    if not path.startswith("records"):
        return True
    return path.startswith("records100/") and int(os.path.basename(path)[:5]) <= 20


def test_download_verifies_and_resumes(mirror, tmp_path, serve):
    url = serve(mirror)
    dest = tmp_path / "ptb-xl"
    report = download_physionet(str(dest), url, include=first_records, num_workers=4)
    assert report.listed == report.downloaded == 3 + 40  # LICENSE, 2 CSVs + 20 x (.hea, .dat)
    for rel, digest in parse_sums((dest / "SHA256SUMS.txt").read_text()).items():
        if first_records(rel):
            assert sha256_of(str(dest / rel)) == digest
    # Interrupted download: a partial file is completed with a Range request, a good file is kept.
    target = dest / "records100" / "00000" / "00007_lr.dat"
    data = target.read_bytes()
    os.remove(target)
    (dest / "records100" / "00000" / "00007_lr.dat.part").write_bytes(data[:1000])
    again = download_physionet(str(dest), url, include=first_records)
    assert again.resumed == 1 and again.already_present == report.listed - 1
    assert again.bytes_fetched == len(data) - 1000
    assert ("00007_lr.dat", 1000) in RangeHandler.ranges
    assert target.read_bytes() == data and not (dest / "records100" / "00000" / "00007_lr.dat.part").exists()


def test_checksum_mismatch_names_the_file(mirror, tmp_path, serve):
    shared = os.path.realpath(mirror / "records100")
    os.remove(mirror / "records100")
    (mirror / "records100" / "00000").mkdir(parents=True)
    for k in range(1, 21):
        for ext in (".hea", ".dat"):
            shutil.copyfile(os.path.join(shared, "00000", f"{k:05d}_lr{ext}"), mirror / "records100" / "00000" / f"{k:05d}_lr{ext}")
    bad = mirror / "records100" / "00000" / "00003_lr.dat"
    with open(bad, "r+b") as f:
        f.write(b"\x00\x01\x02")
    url = serve(mirror)
    with pytest.raises(ChecksumError, match=r"records100/00000/00003_lr\.dat: SHA-256 .* does not match"):
        download_physionet(str(tmp_path / "dest"), url, include=first_records)
    assert not (tmp_path / "dest" / "records100" / "00000" / "00003_lr.dat").exists()


def test_unreachable_server_and_unsafe_sums(tmp_path):
    with pytest.raises(DownloadError, match="127.0.0.1:9"):
        download_physionet(str(tmp_path), "http://127.0.0.1:9/", timeout=2)
    with pytest.raises(DownloadError, match="unsafe path"):
        parse_sums("0" * 64 + " ../../etc/passwd\n")


def test_prepare_data_cli_downloads_then_prepares(mirror, tmp_path, serve, repo_root):
    url = serve(mirror)
    source, out = tmp_path / "ptb-xl", tmp_path / "prepared"
    cmd = [sys.executable, "-m", "experiments.prepare_data", "--dataset=ptbxl", "--download", f"--base_url={url}",
           f"--source_dir={source}", f"--out_dir={out}", "--fs=100", "--num_workers=1"]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    # The shared SHA256SUMS.txt lists records 1-100, so those are fetched; the other 400 rows of the database
    # are reported as missing, not silently dropped.
    assert "download: 203 files listed, 203 downloaded" in result.stdout
    assert "read 500, written 100" in result.stdout and "skipped 400 (missing_file 400)" in result.stdout
    assert (out / "ptbxl" / "100hz_10s" / "1.0.0" / "prepare_report.json").exists()
    again = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "exists; pass overwrite" in again.stderr  # a user error: exit status 2
