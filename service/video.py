"""Video style transfer (issue 20): probe -> decode frames -> the model, frame by frame -> H.264 mp4, audio kept.

The container and codecs are FFmpeg's, through PyAV (a wheel that bundles FFmpeg): any container FFmpeg reads
(mp4, mov, webm/mkv, gif, ...) whose video codec it decodes. A job's video is probed when it is submitted, so
most bad input is refused at once with a 4xx: not a video, no video stream, an undecodable codec, a truncated
file (fewer frames than its header announces, or its last frame well before its stated duration), a variable
frame rate, or over a limit (bytes, seconds, frames, frame size: the STYA2K_VIDEO_* settings).

When the job runs, the style features are encoded once, then the frames are decoded in order, scaled to the
output size, stylized in batches of the engine's batch size (one model-thread turn each, so sync requests run
between two batches), optionally smoothed over time (model.temporal.TemporalSmoother) and encoded with x264 at
the source's frame rate. The audio track is copied packet for packet when mp4 can hold its codec, else
transcoded to AAC (the job's result says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

try:
    import av
    import av.error
except ImportError:  # pragma: no cover - an install without the av pin (the GPU lease box, bench/gpu)
    av = None

from model import StyleFeatures
from model.imageio import quantize
from service import geometry, imaging
from service.contract import SMOOTHING, Mode, StyleFit, StyleInput, TransferJob, VideoRequest
from service.engine import Engine
from service.errors import (
    InvalidParameter,
    InvalidVideo,
    ServiceError,
    UnsupportedVideo,
    VideoTooLarge,
    VideoUnavailable,
    byte_size,
)
from service.metrics import ServiceMetrics
from service.pipeline import ProgressHook, prepare_style, validate
from service.settings import Settings
from service.workload import ComputeRate, Pace

log = logging.getLogger("service.video")
T = TypeVar("T")

VIDEO_FORMAT = "mp4"
VIDEO_MEDIA_TYPE = "video/mp4"
# Audio codecs the mp4 muxer takes as they are; any other is transcoded to AAC.
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"})
AAC_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}  # by channel count; others are mixed to stereo
# x264 at a visually transparent quality: stylized frames are mostly texture, which low rates smear.
X264_OPTIONS = {"crf": "18", "preset": "medium"}
# A frame interval may differ from the median by this fraction (or by one tick of the time base, the rounding
# of e.g. a 12 fps GIF's 8/9 centisecond delays) before the rate counts as variable.
VFR_TOLERANCE = 0.1
# A clip whose last frame starts more than this fraction of its stated duration early is taken as truncated.
TRUNCATED_FRACTION = 0.9
# The demuxers an upload may be read with (FFmpeg's names). FFmpeg probes any format it knows, and some read more
# than the bytes given: an SDP file opens UDP sockets, an ffconcat or HLS playlist opens the files and URLs it
# lists. So every open names this allow-list (plain containers that read only their own bytes, plus the still-image
# pipes, which are refused with a clear message below) and allows no protocol for nested opens at all.
ALLOWED_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,gif,ogg,flv,asf,"
    "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe"
)
ALLOWED_CONTAINERS_TEXT = "mp4, mov, m4v, 3gp, mkv, webm, avi, mpeg-ts, gif, ogg, flv, asf/wmv"
# The probe decodes keyframes (a stream changes its frame size only at one) for at most this long, so a frame that
# grows past the limit after the header is refused at submission; past it, the running job checks every frame.
KEYFRAME_PROBE_S = 1.0
# "none" names no protocol FFmpeg has: a demuxer that tries to open a file, socket or URL fails at once.
OPEN_OPTIONS = {"format_whitelist": ALLOWED_DEMUXERS, "protocol_whitelist": "none"}


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int
    max_seconds: float
    max_frames: int
    max_input_pixels: int

    @staticmethod
    def of(settings: Settings) -> VideoLimits:
        return VideoLimits(
            max_bytes=settings.video_max_bytes,
            max_seconds=settings.video_max_seconds,
            max_frames=settings.video_max_frames,
            max_input_pixels=settings.video_max_input_pixels,
        )


@dataclass(frozen=True)
class VideoInfo:
    """What the probe found: the video stream as shown (rotation applied) and the audio track, if any."""

    container: str
    codec: str
    width: int  # as displayed: a rotated phone clip's width and height are swapped
    height: int
    rotation: int  # degrees counter-clockwise to display it upright (0, 90, 180, 270)
    frames: int
    rate: Fraction  # frames per second
    audio_codec: str | None

    @property
    def seconds(self) -> float:
        return float(self.frames / self.rate)


@dataclass(frozen=True)
class PreparedVideo:
    """A validated, probed video job: what is left is the model and the encoding."""

    request: VideoRequest
    info: VideoInfo
    size: tuple[int, int]  # (W, H) of the output, both even (H.264 4:2:0)
    styles: tuple[StyleInput, ...]
    weights: torch.Tensor | None  # (N,) for interpolate
    max_input_pixels: int  # every decoded frame is checked against it (STYA2K_VIDEO_MAX_INPUT_PIXELS)


@dataclass(frozen=True)
class VideoOutcome:
    """The encoded mp4 and what went into it."""

    body: bytes
    width: int
    height: int
    frames: int
    rate: Fraction
    audio: str  # "none", "copied <codec>" or "transcoded <codec> to aac"
    smoothing: float
    compute_s: float
    format: str = VIDEO_FORMAT
    media_type: str = VIDEO_MEDIA_TYPE

    def details(self) -> dict[str, Any]:
        """The job view's result fields beyond format, size and bytes."""
        return {
            "frames": self.frames,
            "fps": round(float(self.rate), 3),
            "frame_rate": f"{self.rate.numerator}/{self.rate.denominator}",
            "audio": self.audio,
            "smoothing": self.smoothing,
        }


class VideoRunner(Protocol):
    """Where a video job's steps run: blocking work off the loop, model work where the model runs."""

    engine: Engine
    decode_budget: imaging.DecodeBudget | None
    rate: ComputeRate | None  # hears the model time of each batch of frames
    deadline: float  # time.monotonic() by which the job must end (math.inf: none)

    def lookup_style(self, key: str) -> StyleFeatures | None: ...

    async def offload(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def call_model(self, fn: Callable[..., T], *args: Any) -> T: ...


# ---------------------------------------------------------------------------------------------- validation
def validate_video_request(request: VideoRequest, settings: Settings) -> VideoRequest:
    """Cheap checks that need no decoding; returns the request with its mode and weights normalised."""
    if Mode(request.mode) is Mode.multistyle:
        raise InvalidParameter(
            "mode", "multistyle takes still images only (its masks are drawn on one image); a video takes "
            "stylize or interpolate"
        )  # fmt: skip
    if not SMOOTHING.contains(request.smoothing):
        raise InvalidParameter("smoothing", f"{request.smoothing} is out of range; allowed {SMOOTHING.text()}")
    checked = validate(request.as_transfer(), settings, max_side=settings.video_max_side)
    return dataclasses.replace(
        request, mode=checked.mode, weights=checked.weights, style_fit=checked.style_fit
    )


def output_size(info: VideoInfo, side: int) -> tuple[int, int]:
    """(W, H) with the longest side at most ``side`` (never upscaled), aspect kept, both even and >= 2."""
    width, height = geometry.fit_within(info.width, info.height, side)
    return max(2, width - width % 2), max(2, height - height % 2)


# ---------------------------------------------------------------------------------------------- probing
def _require_av() -> None:
    if av is None:
        raise VideoUnavailable(
            "video jobs need PyAV, which this installation lacks: pip install av==18.1.0 (a dependency of "
            "stya2k-serve; only a partial install skips it)"
        )


def _open(data: bytes) -> av.container.InputContainer:
    """The upload as an FFmpeg input, read with an allowed demuxer only and unable to open anything else."""
    _require_av()
    try:
        return av.open(io.BytesIO(data), mode="r", container_options=dict(OPEN_OPTIONS))
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        raise InvalidVideo(
            f"not a readable video ({_reason(exc)}); send mp4, mov, webm, mkv or gif (an mp4 whose index is at "
            "its end is unreadable when cut short)"
        ) from None
    except av.error.ArgumentError:
        # FFmpeg recognised the file as a format outside ALLOWED_DEMUXERS (a playlist, an SDP session, ...)
        raise UnsupportedVideo(
            f"the file is not in a video container this service reads; accepted: {ALLOWED_CONTAINERS_TEXT}"
        ) from None
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"the video could not be opened ({_reason(exc)})") from None


def _limit_frame_size(stream: av.video.stream.VideoStream, max_pixels: int) -> None:
    """Make the decoder refuse any frame over ``max_pixels`` before it allocates it: the header's size is checked
    at submission, but a stream may change its frame size at any later keyframe."""
    stream.codec_context.options = {"max_pixels": str(max_pixels)}


def _check_frame_size(width: int, height: int, max_pixels: int, where: str) -> None:
    if width * height > max_pixels:
        raise VideoTooLarge(
            f"{where} is {width}x{height} px, over the limit of {max_pixels} pixels a frame "
            "(STYA2K_VIDEO_MAX_INPUT_PIXELS)"
        )
    if min(width, height) < geometry.MIN_SIDE:
        raise InvalidVideo(
            f"{where} is {width}x{height} px, too small; each side must be at least {geometry.MIN_SIDE} px "
            "(frames are never upscaled)"
        )


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)[:200]


def _rotation(first: av.VideoFrame | None) -> int:
    """Degrees counter-clockwise that display the frames upright (the display matrix of phone clips)."""
    degrees = getattr(first, "rotation", 0) if first is not None else 0
    return round(float(degrees or 0) / 90.0) % 4 * 90


def probe(data: bytes, limits: VideoLimits) -> VideoInfo:
    """Check the whole file without decoding it all (blocking; run in a worker thread).

    Every video packet is read (cheap: no decoding) to count the frames and check their intervals and the
    file's completeness; the first frame is decoded to check the codec.
    """
    if len(data) > limits.max_bytes:
        raise VideoTooLarge(
            f"the video is {byte_size(len(data))}; the limit is {byte_size(limits.max_bytes)} (STYA2K_VIDEO_MAX_BYTES)"
        )
    with _open(data) as container:
        demuxer = container.format.name
        if demuxer == "image2" or demuxer.endswith("_pipe"):  # FFmpeg reads a photo as a one-frame video
            raise InvalidVideo(
                f"this is a still image ({demuxer.removesuffix('_pipe')}), not a video; send a photo as content"
            )
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise InvalidVideo(f"the file has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise UnsupportedVideo("the video stream's codec is one FFmpeg cannot decode")
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_frame_size(width, height, limits.max_input_pixels, "the video's frame size")
        _limit_frame_size(stream, limits.max_input_pixels)
        first = _first_frame(container, stream, codec)
        container.seek(0)
        times = _packet_times(container, stream, limits)
        audio = _audio_codec(container)
        rate = _constant_rate(times, stream)
        _check_complete(container, stream, times, rate)
    _check_keyframes(data, limits.max_input_pixels, KEYFRAME_PROBE_S)
    info_rotation = _rotation(first)
    if info_rotation in (90, 270):
        width, height = height, width
    info = VideoInfo(
        container=demuxer.split(",")[0], codec=codec, width=width, height=height,
        rotation=info_rotation, frames=len(times), rate=rate, audio_codec=audio,
    )  # fmt: skip
    if info.frames < 1:
        raise InvalidVideo("the video stream has no frames")
    if info.seconds > limits.max_seconds:
        raise VideoTooLarge(
            f"the video lasts {info.seconds:.1f} s; the limit is {limits.max_seconds:g} s (STYA2K_VIDEO_MAX_SECONDS)"
        )
    return info


def _check_keyframes(data: bytes, max_pixels: int, budget_s: float) -> None:
    """Decode the keyframes for at most ``budget_s``: any of them over ``max_pixels`` (the decoder refuses it before
    allocating it) is a 413 now. Other decoding errors are left to the job, which reports the frame."""
    started = time.monotonic()
    with _open(data) as container:
        stream = container.streams.video[0]
        _limit_frame_size(stream, max_pixels)
        stream.codec_context.skip_frame = "NONKEY"
        try:
            for _ in container.decode(stream):
                if time.monotonic() - started > budget_s:
                    return
        except av.error.FFmpegError:
            pass
        context = stream.codec_context  # the size the stream changed to, or 0x0 where a decoder reset it
        if context.width * context.height > max_pixels or context.width == 0 or context.height == 0:
            raise VideoTooLarge(
                f"a keyframe of the video changes its frame size to {context.width}x{context.height} px after the "
                f"header, over the limit of {max_pixels} pixels a frame (STYA2K_VIDEO_MAX_INPUT_PIXELS) or invalid"
            )


def _audio_codec(container: av.container.InputContainer) -> str | None:
    """The first audio track's codec, or None without audio; a track FFmpeg cannot decode is refused (415)."""
    if not container.streams.audio:
        return None
    context = container.streams.audio[0].codec_context
    if context is None:
        raise UnsupportedVideo(
            "the audio track's codec is one FFmpeg cannot decode, so it can be neither copied nor transcoded; "
            "remove the audio (ffmpeg -i in.mkv -an -c:v copy out.mkv) or re-encode it (e.g. AAC)"
        )
    return str(context.name)


def _first_frame(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, codec: str
) -> av.VideoFrame | None:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise UnsupportedVideo(f"the {codec} video stream could not be decoded ({_reason(exc)})") from None
    return None


def _packet_times(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: VideoLimits
) -> list[int]:
    """The presentation times of every video packet, in order, in the stream's time base."""
    times: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # the flush packet at the end, or a packet without a time (not a frame we can place)
            times.append(int(packet.pts))
            if len(times) > limits.max_frames:
                raise VideoTooLarge(
                    f"the video has more than {limits.max_frames} frames (STYA2K_VIDEO_MAX_FRAMES)"
                )
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"the video is damaged or truncated after {len(times)} frames ({_reason(exc)})") from None
    times.sort()
    return times


def _constant_rate(times: Sequence[int], stream: av.video.stream.VideoStream) -> Fraction:
    """Frames per second of a constant-rate stream; a variable rate is refused (415)."""
    time_base = stream.time_base or Fraction(1, 1000)
    declared = stream.average_rate or stream.guessed_rate
    if len(times) < 3:
        if declared:
            return Fraction(declared)
        raise InvalidVideo("the video's frame rate is unknown (fewer than 3 frames and none declared)")
    intervals = [b - a for a, b in itertools.pairwise(times)]
    median = statistics.median(intervals)
    if median <= 0:
        raise InvalidVideo("the video's frames have no increasing times")
    allowed = max(1.0, VFR_TOLERANCE * median)
    outliers = [d for d in intervals if abs(d - median) > allowed]
    if outliers:
        shortest, longest = min(intervals) * time_base * 1000, max(intervals) * time_base * 1000
        raise UnsupportedVideo(
            f"the video has a variable frame rate (frame intervals from {float(shortest):.1f} to "
            f"{float(longest):.1f} ms); convert it to a constant rate first, e.g. "
            "ffmpeg -i in.mp4 -vf fps=30 -c:a copy out.mp4"
        )
    mean = Fraction(times[-1] - times[0], len(times) - 1) * time_base  # seconds per frame
    rate = 1 / mean
    if declared and abs(float(declared) - float(rate)) <= 0.01 * float(rate):
        return Fraction(declared)  # the exact 30000/1001 rather than the measured 29.97002
    return rate.limit_denominator(1001)


def _check_complete(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, times: Sequence[int],
    rate: Fraction,
) -> None:  # fmt: skip
    announced = stream.frames or 0
    if announced and len(times) < announced:
        raise InvalidVideo(
            f"the video is truncated: {len(times)} frames could be read of the {announced} its header announces"
        )
    if container.duration and times:
        stated_s = container.duration / av.time_base
        start = stream.start_time or 0
        last_s = float((times[-1] - start) * stream.time_base) + float(1 / rate)
        if stated_s > 1.0 and last_s < TRUNCATED_FRACTION * stated_s:
            raise InvalidVideo(
                f"the video is truncated: its frames end at {last_s:.2f} s of the {stated_s:.2f} s it states"
            )


# ---------------------------------------------------------------------------------------------- frames
class FrameReader:
    """The decoded frames of a video, upright and scaled to ``size``, as (3, H, W) float tensors in [0, 1]."""

    def __init__(self, data: bytes, info: VideoInfo, size: tuple[int, int], max_input_pixels: int) -> None:
        self._container = _open(data)
        self._info = info
        self._size = size
        self._max_pixels = max_input_pixels
        stream = self._container.streams.video[0]
        _limit_frame_size(stream, max_input_pixels)
        stream.thread_type = "AUTO"  # frame threads: decoding keeps up with the model on any machine
        self._stream = stream
        self._frames = self._container.decode(stream)
        self.read_count = 0

    def read(self, count: int) -> list[torch.Tensor]:
        """Up to ``count`` next frames; [] at the end."""
        frames: list[torch.Tensor] = []
        try:
            for frame in self._frames:
                frames.append(self._tensor(frame, self.read_count + len(frames) + 1))
                if len(frames) == count:
                    break
        except av.error.FFmpegError as exc:
            where = f"frame {self.read_count + len(frames) + 1}"
            self._check_stream_size(where)
            raise InvalidVideo(f"the video could not be decoded at {where} ({_reason(exc)})") from None
        self.read_count += len(frames)
        if len(frames) < count:  # the end: a last frame the decoder refused for its size leaves no error behind
            self._check_stream_size(f"frame {self.read_count + 1}")
        return frames

    def _check_stream_size(self, where: str) -> None:
        context = self._stream.codec_context  # holds the size the stream changed to, when it did
        if context.width == 0 or context.height == 0:
            # some decoders (mpeg4) reset the size to 0x0 when they refuse a new one for max_pixels
            raise VideoTooLarge(
                f"{where}: the decoder refused the frame size the stream changed to, over the limit of "
                f"{self._max_pixels} pixels a frame (STYA2K_VIDEO_MAX_INPUT_PIXELS) or invalid"
            )
        _check_frame_size(context.width, context.height, self._max_pixels, where)

    def _tensor(self, frame: av.VideoFrame, number: int) -> torch.Tensor:
        _check_frame_size(frame.width, frame.height, self._max_pixels, f"frame {number}")
        width, height = self._size
        turns = self._info.rotation // 90
        if turns % 2:
            width, height = height, width  # scale the stored frame, then turn it upright
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")  # (H, W, 3)
        tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255)  # (3, H, W)
        return torch.rot90(tensor, turns, dims=(1, 2)).contiguous() if turns else tensor

    def close(self) -> None:
        self._container.close()


class Mp4Writer:
    """H.264 frames at a constant rate into an mp4 file, then the source's audio track (copied or as AAC)."""

    def __init__(self, path: Path, size: tuple[int, int], rate: Fraction, source: bytes) -> None:
        _require_av()
        self._path = path
        # faststart: the index goes before the frames, so players start before the whole file has arrived
        self._out = av.open(str(path), mode="w", format="mp4", container_options={"movflags": "+faststart"})
        self._video = self._out.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
        self._video.width, self._video.height = size
        self._video.pix_fmt = "yuv420p"
        self._source = _open(source)
        self._audio_in = self._source.streams.audio[0] if self._source.streams.audio else None
        self._audio_out: Any = None
        self.audio = "none"
        if self._audio_in is not None:
            name = self._audio_in.codec_context.name
            if name in MP4_AUDIO_CODECS:
                self._audio_out = self._out.add_stream_from_template(self._audio_in, opaque=True)
                self.audio = f"copied {name}"
            else:
                # A track of unknown channel order (e.g. PCM in mkv: "1 channels") gets the standard layout of its
                # channel count; the encoder resamples to it.
                channels = self._audio_in.codec_context.layout.nb_channels
                layout = AAC_LAYOUTS.get(channels, "stereo")
                self._audio_out = self._out.add_stream("aac", rate=self._audio_in.codec_context.sample_rate,
                                                       layout=layout)  # fmt: skip
                self.audio = f"transcoded {name} to aac"
        self._index = 0
        self._time_base = 1 / rate  # frame i is shown at i / rate seconds

    def write(self, image: torch.Tensor) -> None:
        """One uint8 (3, H, W) frame."""
        rgb = image.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self._index
        frame.time_base = self._time_base
        self._index += 1
        for packet in self._video.encode(frame):
            self._out.mux(packet)

    def finish(self) -> bytes:
        for packet in self._video.encode(None):
            self._out.mux(packet)
        if self._audio_in is not None:
            self._write_audio()
        self._out.close()
        self._source.close()
        return self._path.read_bytes()

    def _write_audio(self) -> None:
        assert self._audio_in is not None
        try:
            if self.audio.startswith("copied"):
                for packet in self._source.demux(self._audio_in):
                    if packet.dts is None:
                        continue  # the demuxer's flush packet
                    packet.stream = self._audio_out
                    self._out.mux(packet)
                return
            for frame in self._source.decode(self._audio_in):
                frame.pts = None  # the encoder numbers the samples itself
                for packet in self._audio_out.encode(frame):
                    self._out.mux(packet)
            for packet in self._audio_out.encode(None):
                self._out.mux(packet)
        except av.error.FFmpegError as exc:
            raise InvalidVideo(f"the audio track could not be read ({_reason(exc)})") from None

    def close(self) -> None:
        """Release the files (after finish, or on failure / cancellation)."""
        with contextlib.suppress(Exception):
            self._out.close()
        with contextlib.suppress(Exception):
            self._source.close()


# ---------------------------------------------------------------------------------------------- the job
async def prepare_video(
    request: VideoRequest, settings: Settings, runner: VideoRunner, metrics: ServiceMetrics | None = None
) -> PreparedVideo:
    """Validate, probe and decode the styles: every bad input is refused here, before any model work."""
    request = validate_video_request(request, settings)
    started = time.monotonic()
    prepared = await runner.offload(_prepare_blocking, request, settings, runner.lookup_style, runner.decode_budget)
    if metrics is not None:
        metrics.decode_time.observe(time.monotonic() - started)
    return prepared


def _prepare_blocking(
    request: VideoRequest,
    settings: Settings,
    lookup_style: Callable[[str], StyleFeatures | None],
    budget: imaging.DecodeBudget | None,
) -> PreparedVideo:
    try:
        info = probe(request.video, VideoLimits.of(settings))
    except ServiceError:
        raise
    except Exception as exc:  # FFmpeg on odd input: bad input, never a 500
        log.warning("video probe failed unexpectedly", exc_info=exc)
        raise InvalidVideo(f"the video could not be read ({type(exc).__name__}: {exc})") from None
    limits = imaging.ImageLimits(settings.max_input_pixels, budget)
    fit = StyleFit(request.style_fit or settings.style_fit)
    count = len(request.styles)
    styles = tuple(
        prepare_style(data, f"style[{i}]" if count > 1 else "style", fit, settings, limits, lookup_style)
        for i, data in enumerate(request.styles)
    )
    weights = torch.tensor(request.weights, dtype=torch.float32) if request.mode is Mode.interpolate else None
    size = output_size(info, request.max_side or settings.default_side)
    return PreparedVideo(
        request=request, info=info, size=size, styles=styles, weights=weights,
        max_input_pixels=settings.video_max_input_pixels,
    )  # fmt: skip


class _MediaWork:
    """A video job's files and the one thread that touches them.

    PyAV objects must not be used from two threads at once, and a cancelled job's last read or write may still
    be running in its thread when the job unwinds: so every file step, the clean-up included, is queued on one
    thread of the job's own, and the clean-up runs after whatever is in flight.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stya2k-video")
        self.folder = Path(tempfile.mkdtemp(prefix="stya2k-video-"))
        self.reader: FrameReader | None = None
        self.writer: Mp4Writer | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def release(self) -> None:
        """Close the files and delete the folder, after the step in flight (never blocks the caller)."""
        self._pool.submit(self._clean_up)
        self._pool.shutdown(wait=False)

    def _clean_up(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.reader is not None:
            self.reader.close()
        shutil.rmtree(self.folder, ignore_errors=True)


async def complete_video(
    prepared: PreparedVideo, runner: VideoRunner, on_progress: ProgressHook | None = None
) -> VideoOutcome:
    """Stylize every frame (batches of the engine's batch size), smooth, encode; progress in frames."""
    engine, request, info = runner.engine, prepared.request, prepared.info
    started = time.monotonic()
    styles = await runner.call_model(engine.with_style_features, prepared.styles)  # encoded once for all frames
    smoother = _smoother(request.smoothing)
    total, done = info.frames, 0
    media = _MediaWork()
    try:
        reader = media.reader = await media.run(
            FrameReader, request.video, info, prepared.size, prepared.max_input_pixels
        )
        writer = media.writer = await media.run(
            Mp4Writer, media.folder / "out.mp4", prepared.size, info.rate, request.video
        )
        if on_progress is not None:
            on_progress(0, total)
        pace = Pace(runner.deadline, "frame")
        while frames := await media.run(reader.read, max(1, engine.max_batch_size)):
            jobs = [_frame_job(request, frame, styles, prepared.weights) for frame in frames]
            images, model_s = await runner.call_model(_stylize, engine, jobs)
            if runner.rate is not None:
                runner.rate.observe(len(frames) * prepared.size[0] * prepared.size[1], model_s)
            await media.run(_write_frames, writer, frames, images, smoother)
            done += len(frames)
            total = max(total, done)
            if on_progress is not None:
                on_progress(done, total)
            pace.check(done, total, time.monotonic())
        if done == 0:
            raise InvalidVideo("no frame of the video could be decoded")
        body = await media.run(writer.finish)
    finally:
        media.release()
    return VideoOutcome(
        body=body, width=prepared.size[0], height=prepared.size[1], frames=done, rate=info.rate,
        audio=writer.audio, smoothing=request.smoothing, compute_s=time.monotonic() - started,
    )  # fmt: skip


def _frame_job(
    request: VideoRequest, frame: torch.Tensor, styles: tuple[StyleInput, ...], weights: torch.Tensor | None
) -> TransferJob:
    return TransferJob(
        mode=request.mode, content=frame, styles=styles, weights=weights, alpha=request.alpha,
        preserve_color=request.preserve_color,
    )  # fmt: skip


def _stylize(engine: Engine, jobs: list[TransferJob]) -> tuple[list[torch.Tensor], float]:
    """One forward pass over a batch of frames (in the model thread) -> uint8 (3, H, W) each, and its seconds
    (timed here, so time spent waiting for the model thread is not counted as model time)."""
    started = time.monotonic()
    try:
        results = engine.run_batch(jobs)
    except ServiceError:
        raise
    except Exception as exc:
        raise engine.failure(jobs[0], exc) from exc
    images = []
    for result in results:
        if isinstance(result, BaseException):
            raise engine.failure(jobs[0], result)
        images.append(result)
    return images, time.monotonic() - started


def _smoother(strength: float) -> Any:
    if strength <= 0:
        return None
    from model.temporal import TemporalSmoother  # OpenCV's optical flow: loaded only when smoothing is asked

    return TemporalSmoother(strength)


def _write_frames(writer: Mp4Writer, frames: Sequence[torch.Tensor], images: Sequence[torch.Tensor],
                  smoother: Any) -> None:  # fmt: skip
    for content, image in zip(frames, images, strict=True):
        if smoother is not None:
            smoothed = smoother.step(content, image.float().div(255))  # (3, H, W) in [0, 1]
            image = quantize(smoothed)
        writer.write(image)
