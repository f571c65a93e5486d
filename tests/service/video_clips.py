"""Small video clips made in the tests with PyAV (no files on disk are needed): a moving bar over a gradient,
in the containers and codecs the video jobs take, with an optional tone as audio."""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _picture(index: int, width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (xs * 255 // max(1, width - 1)).astype(np.uint8)
    rgb[..., 1] = (ys * 255 // max(1, height - 1)).astype(np.uint8)
    rgb[..., 2] = 90
    bar = (index * 4) % width
    rgb[:, bar : bar + 6] = (250, 250, 40)  # (H, 6, 3): moves 4 px per frame
    return rgb


def make_clip(
    container: str = "mp4",
    codec: str = "libx264",
    audio: str | None = "aac",
    frames: int = 12,
    rate: int | Fraction = 12,
    size: tuple[int, int] = (64, 48),
    variable_rate: bool = False,
    rotation: int = 0,
) -> bytes:
    """A clip of ``frames`` frames at ``rate`` fps, ``size`` = (W, H); with a 440 Hz tone when ``audio`` names
    an encoder (aac, libopus, pcm_s16le, ...). ``variable_rate``: frame intervals alternate 120 / 40 ms."""
    width, height = size
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{container}"
        with av.open(str(path), mode="w", format=container) as out:
            video = out.add_stream(codec) if variable_rate else out.add_stream(codec, rate=rate)
            video.width, video.height = width, height
            video.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
            if variable_rate:
                video.codec_context.time_base = Fraction(1, 1000)
            if rotation:
                video.set_display_rotation(rotation)
            tone = None
            if audio is not None:
                tone = out.add_stream(audio, rate=48000 if "opus" in audio else 44100, layout="mono")
            stamp = 0
            for index in range(frames):
                frame = av.VideoFrame.from_ndarray(_picture(index, width, height), format="rgb24")
                if variable_rate:
                    frame.pts, frame.time_base = stamp, Fraction(1, 1000)
                    stamp += 120 if index % 2 == 0 else 40
                else:
                    frame.pts = index
                for packet in video.encode(frame):
                    out.mux(packet)
            for packet in video.encode(None):
                out.mux(packet)
            if tone is not None:
                _write_tone(out, tone, seconds=float(Fraction(frames) / Fraction(rate)))
        return path.read_bytes()


def _write_tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    sample_rate = stream.codec_context.sample_rate
    samples = int(sample_rate * seconds)
    wave = (0.2 * np.sin(np.arange(samples) / sample_rate * 2 * np.pi * 440)).astype(np.float32)
    step = stream.codec_context.frame_size or 1024
    for start in range(0, samples, step):
        chunk = wave[start : start + step]
        if len(chunk) < step:
            chunk = np.pad(chunk, (0, step - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def audio_only(seconds: float = 0.5) -> bytes:
    """An m4a file: an AAC track and no video."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tone.m4a"
        with av.open(str(path), mode="w", format="mp4") as out:
            _write_tone(out, out.add_stream("aac", rate=44100, layout="mono"), seconds)
        return path.read_bytes()


def describe(data: bytes) -> dict[str, object]:
    """What a player would see: frames (decoded), rate, size, audio codec and the audio packets' bytes."""
    import io

    with av.open(io.BytesIO(data)) as container:  # demuxing after a seek may skip a leading packet: open twice
        audio_packets: list[bytes] = []
        audio_codec = None
        if container.streams.audio:
            stream = container.streams.audio[0]
            audio_codec = stream.codec_context.name
            audio_packets = [bytes(p) for p in container.demux(stream) if p.size]
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        return {
            "format": container.format.name,
            "codec": video.codec_context.name,
            "frames": len(decoded),
            "rate": video.average_rate,
            "size": (video.codec_context.width, video.codec_context.height),
            "audio_codec": audio_codec,
            "audio_packets": audio_packets,
            "first_frame": decoded[0] if decoded else None,
        }
