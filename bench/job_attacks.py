"""Attacks on the video and jobs surface (issue 28), against `python -m service` on 127.0.0.1, with the liveness
probe and RSS sampler of :mod:`bench.reliability`.

    python -m bench.job_attacks                                   # every attack, results to bench/results
    python -m bench.job_attacks --attacks sdp,ffconcat --out /tmp/j.json
    python -m bench.job_attacks --repo /tmp/old-tree              # the same attacks against another checkout

The builders below make the hostile uploads (an SDP session, an ffconcat playlist, an MPEG-TS stream whose
frames grow after the first ones, a tiny GIF with thousands of full-screen frames, 1 px frames, an audio track of
an unknown codec, 4096 px multistyle jobs with four masks); tests/service/test_job_attacks.py sends the same
ones, at small sizes, to a real server.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.reliability import REPO_ROOT, RESULTS_DIR, Probe, RSSSampler, machine, running_server

MIB = 2**20
REPEAT_S = 8.0  # upload attacks repeat back to back for this long, so the probe sees enough of them


# ---------------------------------------------------------------------------------------------- uploads
def sdp_session(port: int) -> bytes:
    """An SDP text: FFmpeg's sdp demuxer opens RTP/UDP sockets on the ports it names and waits for packets."""
    return (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=stream\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        f"m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    ).encode()


def ffconcat_playlist(path: str) -> bytes:
    """An ffconcat text: FFmpeg's concat demuxer opens the files it lists (relative to the working directory)."""
    return f"ffconcat version 1.0\nfile '{path}'\n".encode()


def _ts(frames: list[tuple[int, int, int]], codec: str, rate: int = 25) -> bytes:
    """MPEG-TS with ``codec`` frames of the given (width, height, count) runs, one encoder (and header) per run."""
    import av

    data, offset = b"", 0
    for width, height, count in frames:
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="mpegts") as out:
            options = {"preset": "ultrafast"} if codec == "libx264" else {}
            stream = out.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            picture = np.full((height, width, 3), 90, np.uint8)
            for index in range(count):
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts = offset + index  # one timeline across the runs: a constant frame rate
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        data += buffer.getvalue()
        offset += count
    return data


def growing_frames_ts(small: tuple[int, int], small_frames: int, big: tuple[int, int], big_frames: int,
                      codec: str = "libx264") -> bytes:  # fmt: skip
    """An MPEG-TS stream whose first ``small_frames`` frames are ``small`` and the next ones ``big`` (W, H): the
    header (all a probe reads) says small. ``codec``: libx264 keeps the refused size in its context, mpeg4 resets
    it to 0x0 (both must fail the job as too large)."""
    return _ts([(*small, small_frames), (*big, big_frames)], codec)


def screen_gif(frames: int, screen: tuple[int, int], delay_cs: int = 2) -> bytes:
    """A GIF of ``frames`` frames on a ``screen`` (W, H) canvas, each frame a 1 px change: a few bytes per frame,
    while every decoded frame is the whole screen (the issue's 83 KB GIF of 3600 frames at 2880 x 2880)."""
    width, height = screen
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0))  # global table of 2 colours
    out += bytes([0, 0, 0, 255, 255, 255])
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
    for index in range(frames):
        out += b"\x21\xf9\x04\x04" + struct.pack("<H", delay_cs) + b"\x00\x00"  # graphic control: delay
        x, y = index % width, (index // width) % height
        out += b"\x2c" + struct.pack("<HHHH", x, y, 1, 1) + b"\x00"  # a 1x1 image at (x, y)
        out += b"\x02\x02\x44\x01\x00"  # LZW min code 2: clear, colour (index % 2), end
    out += b"\x3b"
    return bytes(out)


def tiny_frames_gif(side: int, frames: int = 12) -> bytes:
    """A GIF whose frames are ``side`` x ``side`` px (1 or 2: below the 16 px every input must have)."""
    images = [Image.new("P", (side, side), index % 2) for index in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=80, disposal=1,
                   optimize=False)  # fmt: skip
    return buffer.getvalue()


def unknown_audio_mkv(frames: int = 12) -> bytes:
    """A Matroska clip whose audio track's codec id no FFmpeg decoder knows (A_AAC renamed A_ZZZ)."""
    import av

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mkv"
        with av.open(str(path), mode="w", format="matroska") as out:
            video = out.add_stream("libx264", rate=12)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            audio = out.add_stream("aac", rate=44100, layout="mono")
            for index in range(frames):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 20, np.uint8), format="rgb24")
                frame.pts = index
                for packet in video.encode(frame):
                    out.mux(packet)
            for packet in video.encode(None):
                out.mux(packet)
            samples = np.zeros((1, 1024), np.float32)
            for start in range(0, 44100, 1024):
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 44100, start
                for packet in audio.encode(chunk):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
        data = path.read_bytes()
    assert data.count(b"A_AAC") == 1
    return data.replace(b"A_AAC", b"A_ZZZ")


def flat_png(size: tuple[int, int], value: int = 128) -> bytes:
    """A one-colour grayscale PNG: a few KB even at 4096 px."""
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def multistyle_files(side: int, styles: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The parts of a multistyle job at ``side`` px with ``styles`` styles and one full-size mask each."""
    files = [("content", ("c.png", flat_png((side, side), 120), "image/png"))]
    files += [("style", (f"s{i}.png", flat_png((64, 64), 40 * i), "image/png")) for i in range(styles)]
    bands = side // styles
    for index in range(styles):
        mask = Image.new("L", (side, side), 0)
        mask.paste(255, (0, index * bands, side, (index + 1) * bands))
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        files.append(("mask", (f"m{index}.png", buffer.getvalue(), "image/png")))
    return files


def video_job(url: str, video: bytes, name: str = "clip.mp4", timeout_s: float = 60.0,
              **fields: Any) -> httpx.Response:  # fmt: skip
    """POST /v1/jobs with ``video`` and one small style."""
    files = [("video", (name, video, "application/octet-stream")),
             ("style", ("s.png", flat_png((64, 64), 200), "image/png"))]  # fmt: skip
    data = {"mode": "stylize", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(url + "/v1/jobs", files=files, data=data, timeout=timeout_s)


class UdpListener:
    """Counts datagram sockets the server holds open on ``port`` (read from /proc/net/udp) while it waits."""

    def __init__(self, port: int) -> None:
        self.port = port

    def bound(self) -> bool:
        wanted = f":{self.port:04X} "
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                if any(wanted in line.split(None, 3)[1] + " " for line in Path(table).read_text().splitlines()[1:]):
                    return True
            except OSError:
                continue
        return False


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------- the bench
@dataclass
class JobAttack:
    name: str
    description: str
    env: dict[str, str]
    run: Callable[[str], dict[str, Any]]  # url -> what happened
    prepare: Callable[[], object] | None = None  # builds the upload before the probe starts (cached)


def _answers(responses: list[httpx.Response]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for response in responses:
        try:
            body = response.json()
            code = (body.get("error") or {}).get("code") or body.get("state", "?")
        except ValueError:
            code = "non-json"
        key = f"{response.status_code} {code}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _timed_posts(copies: int, send: Callable[[], httpx.Response], repeat_s: float = REPEAT_S) -> dict[str, Any]:
    """``copies`` concurrent senders, each repeating ``send`` until ``repeat_s`` has passed (at least once), so
    the liveness probe sees the whole attack; the answers and the slowest one."""
    responses: list[httpx.Response] = []
    slowest = [0.0]
    lock = threading.Lock()
    until = time.monotonic() + repeat_s

    def sender() -> None:
        while True:
            started = time.monotonic()
            try:
                response = send()
            except httpx.HTTPError as exc:
                response = httpx.Response(599, json={"error": {"code": type(exc).__name__}})
            with lock:
                responses.append(response)
                slowest[0] = max(slowest[0], time.monotonic() - started)
            if time.monotonic() >= until:
                return

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"answers": _answers(responses), "slowest_s": round(slowest[0], 2)}


def attack_sdp(url: str) -> dict[str, Any]:
    port = free_udp_port()
    listener = UdpListener(port)
    seen = {"udp_bound": False}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen["udp_bound"] = seen["udp_bound"] or listener.bound()
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = _timed_posts(8, lambda: video_job(url, sdp_session(port), name="x.sdp", timeout_s=120))
    finally:
        stop.set()
        watcher.join()
    return {**result, "udp_socket_opened": seen["udp_bound"]}


def attack_ffconcat(url: str) -> dict[str, Any]:
    result = _timed_posts(4, lambda: video_job(url, ffconcat_playlist("/etc/hostname"), name="x.ffconcat"))
    return result


@functools.cache
def full_size_growing_clip() -> bytes:
    """The bench's clip: encoding two 8192 px frames takes seconds of CPU, so it is built before the probe runs."""
    return growing_frames_ts((64, 48), 200, (8192, 8192), 2)


@functools.cache
def full_size_gif() -> bytes:
    return screen_gif(3600, (2880, 2880))


def attack_growing_frames(url: str) -> dict[str, Any]:
    clip = full_size_growing_clip()
    response = video_job(url, clip, name="x.ts", max_side=64)
    if response.status_code != 202:
        return {**_timed_posts(1, lambda: video_job(url, clip, name="x.ts", max_side=64)), "bytes": len(clip)}
    return {**_follow(url, response), "bytes": len(clip)}


def attack_long_gif(url: str) -> dict[str, Any]:
    clip = full_size_gif()
    first = video_job(url, clip, name="x.gif")
    if first.status_code == 202:  # the code before issue 28: accepted, and it holds the only job worker
        return {**_follow(url, first, give_up_s=60), "bytes": len(clip)}
    return {**_timed_posts(1, lambda: video_job(url, clip, name="x.gif")), "bytes": len(clip)}


def attack_multistyle_memory(url: str) -> dict[str, Any]:
    files = multistyle_files(4096, 4)
    data = {"mode": "multistyle", "max_side": "4096", "format": "jpeg"}
    responses = [httpx.post(url + "/v1/jobs", files=files, data=data, timeout=120) for _ in range(9)]
    for response in responses:  # leave nothing running behind
        if response.status_code == 202:
            httpx.delete(url + response.headers["location"], timeout=30)
    return {"answers": _answers(responses)}


def _follow(url: str, accepted: httpx.Response, give_up_s: float = 120.0) -> dict[str, Any]:
    """Poll an accepted job until it ends (or cancel it after ``give_up_s``): its end state and error."""
    path = accepted.headers["location"]
    started = time.monotonic()
    view: dict[str, Any] = {}
    while time.monotonic() - started < give_up_s:
        view = httpx.get(url + path, timeout=30).json()
        if view["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.5)
    else:
        view = httpx.delete(url + path, timeout=30).json()
        view["state"] = f"still running after {give_up_s:g} s (cancelled)"
    error = view.get("error") or {}
    return {"answers": {f"202 then {view.get('state')} {error.get('code', '')}".strip(): 1},
            "job_s": round(time.monotonic() - started, 1), "progress": view.get("progress")}  # fmt: skip


def job_attacks() -> list[JobAttack]:
    videos = {"STYA2K_DEFAULT_SIDE": "512"}
    return [
        JobAttack("sdp", "8 SDP uploads naming an RTP/UDP port", videos, attack_sdp),
        JobAttack("ffconcat", "4 ffconcat playlists listing /etc/hostname", videos, attack_ffconcat),
        JobAttack("growing_frames", "MPEG-TS: 200 frames of 64x48, then 8192x8192 (8x the frame limit)", videos,
                  attack_growing_frames, full_size_growing_clip),
        JobAttack("long_gif", "a GIF of 3600 frames on a 2880x2880 screen (72 s at 50 fps)", videos, attack_long_gif,
                  full_size_gif),
        JobAttack("multistyle_memory", "9 multistyle jobs at 4096 px, 4 styles, 4 masks (1 running + 8 queued)",
                  {"STYA2K_JOBS_MAX_SIDE": "4096"}, attack_multistyle_memory),
    ]  # fmt: skip


def run_job_attack(attack: JobAttack, repo: Path) -> dict[str, Any]:
    """One attack against a fresh server (random weights; warm-up on, as deployed: it measures the job rate)."""
    env = {"STYA2K_WEIGHTS": "random", "STYA2K_LOG_LEVEL": "warning", "STYA2K_WARMUP": "1", **attack.env}
    if attack.prepare is not None:
        attack.prepare()
    with running_server(env, repo=repo) as server:
        time.sleep(0.5)
        before = server.rss_bytes()
        with RSSSampler(server) as rss, Probe(server.port) as probe:
            started = time.monotonic()
            outcome = attack.run(server.url)
            duration = time.monotonic() - started
        alive = server.process.poll() is None
    return {
        "attack": attack.name, "description": attack.description, "attack_s": round(duration, 1), **outcome,
        "live": probe.summary(), "rss_before_mib": round(before / MIB), "rss_peak_mib": round(rss.peak / MIB),
        "server_alive": alive,
    }  # fmt: skip


def render(results: list[dict[str, Any]]) -> str:
    lines = ["| attack | outcome | slowest answer | /health/live p50 / p99 / max | RSS before / peak MiB | notes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        live = r["live"]
        notes = {k: v for k, v in r.items() if k in ("udp_socket_opened", "bytes", "job_s", "progress")}
        lines.append(
            f"| {r['description']} | {r['answers']} | {r.get('slowest_s', '-')} s | {live['p50_ms']} / "
            f"{live['p99_ms']} / {live['max_ms']} ms ({live['failures']} failed of {live['probes']}) | "
            f"{r['rss_before_mib']} / {r['rss_peak_mib']} | {notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", default="", help="comma-separated names (default: all)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose server is attacked")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "job-attacks.json")
    args = parser.parse_args(argv)
    wanted = {name for name in args.attacks.split(",") if name}
    chosen = [a for a in job_attacks() if not wanted or a.name in wanted]
    results = []
    for attack in chosen:
        result = run_job_attack(attack, args.repo.resolve())
        print(json.dumps(result), flush=True)
        results.append(result)
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "repo": str(args.repo)}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(render(results))


if __name__ == "__main__":
    main()
