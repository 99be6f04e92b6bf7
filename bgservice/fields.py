"""Every field a cut-out request can carry, described once: name, type, range, default, help.

From these descriptions come the checks and their error messages (JSON values and the strings of
form fields, query strings and the command line), the OpenAPI description, and the command line's
options; so the service, its documentation and the CLI cannot drift apart.

JSON names follow the website's style (`subjectFilter`); the upload endpoint and the CLI use the
snake_case name (`subject_filter`, `--subject-filter`).
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from PIL import ImageColor

import Image_PostProcesser as post

from .errors import BadRequest

# Output formats and their content types; "auto" (FORMAT_CHOICES) is JPEG when a background
# fills every pixel, else PNG (options.OutputOptions.output_format).
FORMATS = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
FORMAT_CHOICES = (*FORMATS, "auto")
MAX_COLOR_TEXT = 64
MAX_PADDING = 10_000
MAX_PADDING_PERCENT = 1000
_PADDING = re.compile(r"^([0-9]{1,5}(?:\.[0-9]{1,3})?) *(px|%)?$")  # ASCII digits only
MAX_NAME = 200
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_RGB = re.compile(r"^([0-9]{1,3}) *, *([0-9]{1,3}) *, *([0-9]{1,3})$")  # ASCII digits only
SUBJECT_FILTER_HELP = ("Drop disconnected regions under a quarter of the largest one's area (stray "
                       "specks, small figures in the background) before the mode is applied")


def shown(value: object, limit: int = 60) -> str:
    """A caller's value in a message: repr, shortened (a message must stay readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Padding(NamedTuple):
    """A crop margin: `amount` pixels, or `amount` percent of the subject's size."""

    amount: float
    percent: bool


@dataclass(frozen=True)
class Field:
    name: str  # snake_case: the upload endpoint's option, and --kebab-case on the command line
    kind: str  # "choice", "int", "bool", "color", "padding", or "name" (checked by the caller)
    help: str
    json_name: str | None = None  # the JSON API's name, where the JSON API has the field
    choices: tuple[str, ...] = ()
    lo: int = 0
    hi: int = 0
    default: Any = None

    # -- checks ------------------------------------------------------------------------------

    def rule(self, name: str) -> str:
        """What a valid value is, as the error messages say it."""
        if self.kind == "int":
            return f"'{name}' must be an integer from {self.lo} to {self.hi}"
        if self.kind == "bool":
            return f"'{name}' must be true or false"
        if self.kind == "color":
            return (f"'{name}' must be a colour: a CSS name (red), #rgb, #rrggbb, #rrggbbaa, "
                    "rgb(r,g,b) or r,g,b (0-255)")
        if self.kind == "name":
            return f"'{name}' must be a name of at most {MAX_NAME} characters"
        if self.kind == "padding":
            return (f"'{name}' must be pixels from 0 to {self.hi} (20 or 20px) or a percentage "
                    f"of the subject's size from 0 to {MAX_PADDING_PERCENT} (10%)")
        return f"'{name}' must be one of {', '.join(self.choices)}"

    def _bad(self, name: str, value: object) -> BadRequest:
        return BadRequest(f"{self.rule(name)}, got {shown(value)}")

    def from_json(self, value: object):
        """A JSON value, checked strictly: no strings for numbers, no numbers for booleans (True is
        an int in Python, and "threshold": true is a mistake); null only where the field has no
        default of its own (it then means "not given")."""
        name = self.json_name or self.name
        if value is None:
            if self.default is not None:
                raise self._bad(name, value)
            return None
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
                raise self._bad(name, value)
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise self._bad(name, value)
        elif self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise self._bad(name, value)
        elif not isinstance(value, str):  # a colour or a name: strings only
            raise self._bad(name, value)
        else:
            return self.from_string(value)
        return value

    def from_string(self, raw: str | None):
        """A string from a form field, a query string or the command line ('' or None: not
        given, except that an empty boolean means false)."""
        text = (raw or "").strip()
        if self.kind == "bool":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise self._bad(self.name, raw)
        if not text:
            return None
        parse = {"int": self._int, "color": _color, "choice": self._choice,
                 "name": _name, "padding": self._padding}[self.kind]
        value = parse(text)
        if value is None:
            raise self._bad(self.name, raw)
        return value

    def _int(self, text: str) -> int | None:
        try:
            value = int(text, 10)
        except ValueError:
            return None
        if not self.lo <= value <= self.hi:
            raise BadRequest(f"{self.rule(self.name)}, got {value}")
        return value

    def _padding(self, text: str) -> Padding | None:
        """'20' or '20px': pixels; '10%' (decimals allowed): of the subject's size."""
        match = _PADDING.match(text.lower())
        if not match:
            return None
        number, unit = match.groups()
        if unit == "%":
            value = float(number)
            return Padding(value, True) if value <= MAX_PADDING_PERCENT else None
        if "." in number or int(number) > self.hi:
            return None
        return Padding(int(number), False)

    def _choice(self, text: str) -> str | None:
        value = text.lower() if self.name == "format" else text
        if value not in self.choices:
            raise self._bad(self.name, value)
        return value

    # -- descriptions ------------------------------------------------------------------------

    def json_schema(self) -> dict:
        if self.kind == "int":
            schema = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        elif self.kind == "bool":
            schema = {"type": "boolean"}
        elif self.kind == "color":
            schema = {"type": "string", "example": "#ffffff"}
        elif self.kind == "name":
            schema = {"type": "string", "maxLength": MAX_NAME}
        elif self.kind == "padding":
            schema = {"type": "string", "pattern": _PADDING.pattern, "example": "10%"}
        else:
            schema = {"type": "string", "enum": list(self.choices)}
        if self.default is not None:
            schema["default"] = self.default
        return {**schema, "description": self.help}

    def add_option(self, parser: argparse.ArgumentParser) -> None:
        """This field as a command-line option (strings: checked by from_string, with the same
        messages as the service's)."""
        flag = "--" + self.name.replace("_", "-")
        if self.kind == "bool":
            parser.add_argument(flag, action="store_true", help=self.help)
        else:
            parser.add_argument(flag, choices=self.choices or None, help=self.help)


def _name(text: str) -> str | None:
    return text if len(text) <= MAX_NAME and text.isprintable() else None


def _color(text: str) -> tuple[int, ...] | None:
    """(r, g, b), or (r, g, b, a) for a see-through colour, from 'r,g,b' (0-255 each), 'rrggbb'
    without its '#', or anything Pillow's ImageColor reads: CSS names ('red'), '#rgb', '#rgba',
    '#rrggbb', '#rrggbbaa', 'rgb()', 'hsl()'. None if it is none of them (ASCII only: Unicode
    digits must not pass for numbers)."""
    if len(text) > MAX_COLOR_TEXT or not text.isascii():
        return None
    match = _RGB.match(text)
    if match:
        return tuple(int(p) for p in match.groups()) if all(int(p) <= 255 for p in match.groups()) else None
    if _HEX.match(text) and not text.startswith("#"):
        text = "#" + text
    try:
        colour = ImageColor.getrgb(text)
    except ValueError:
        return None
    return colour[:3] if len(colour) == 4 and colour[3] == 255 else colour


MODE = Field("mode", "choice", "Output mode (default: the service's default mode, refine; a "
             "threshold implies threshold)", json_name="mode", choices=post.MODES)
THRESHOLD = Field("threshold", "int", "The OpenClone rule: mask values below it become fully "
                  "transparent (0 keeps everything); implies mode threshold",
                  json_name="threshold", lo=0, hi=255)
SUBJECT_FILTER = Field("subject_filter", "bool", SUBJECT_FILTER_HELP, json_name="subjectFilter",
                       default=False)
MODEL = Field("model", "name", "Which of the service's models cuts this image out (default: the "
              "first it serves; /model-info lists them)", json_name="model")
OPTIONS: tuple[Field, ...] = (
    MODEL, MODE, THRESHOLD,
    Field("only_mask", "bool", "Return the 8-bit grayscale mask instead of the cut-out"),
    Field("bg_color", "color", "Composite onto this colour instead of transparency: a CSS name "
          "(red), #rgb, #rrggbb, #rrggbbaa (see-through), rgb(r,g,b) or r,g,b; with bg_image, "
          "what shows where the picture does not", json_name="bgColor"),
    Field("crop", "bool", "Crop to the subject's bounding box"),
    Field("padding", "padding", "Margin around the crop: pixels (20 or 20px) or a percentage of "
          "the subject's width and height (10%)", lo=0, hi=MAX_PADDING),
    Field("format", "choice", "png (default), lossless webp, jpg (quality 90; transparency "
          "flattened onto bg_color or white), or auto: jpg when a background fills every "
          "pixel (an opaque bg_color, bg_blur, or bg_image with bg_fit cover), else png",
          choices=FORMAT_CHOICES),
    SUBJECT_FILTER,
    Field("bg_fit", "choice", "How bg_image fills the frame: cover (default; scaled to fill it, "
          "the overflow cropped evenly) or contain (scaled to fit inside, the margins bg_color "
          "or transparent)", json_name="bgFit", choices=post.BG_FITS),
    Field("bg_blur", "int", "Blur the background, subject sharp: 1-100, the blur's radius in "
          "thousandths of the image's shorter side (20: a portrait lens's look). Blurs the "
          "original background, or bg_image when one is given", json_name="bgBlur", lo=0, hi=100),
)
# The background picture: an uploaded file in the upload endpoint (multipart field `bg_image`),
# a path inside the shared root in the JSON API, a file on the command line (--bg-image).
BG_IMAGE = "bg_image"
BG_IMAGE_PATH = "bgImagePath"
BG_IMAGE_HELP = ("A picture to put behind the subject (scaled by bg_fit; with the refine mode the "
                 "subject's edges keep their own colours, without a halo of the old background)")
# The JSON API's cut-out fields (besides the two paths), by their JSON names.
JSON_OPTIONS: dict[str, Field] = {f.json_name: f for f in OPTIONS if f.json_name}
PATHS = ("sourceImagePath", "outputImagePath")
REMOVE_FIELDS = (*PATHS, BG_IMAGE_PATH, *(f.json_name for f in OPTIONS if f.json_name))


def refuse_unknown(given: Iterable[object], allowed: Iterable[str], noun: str) -> None:
    """BadRequest naming what is not in `allowed` (a typo such as "treshold" must not silently
    mean the default)."""
    allowed = tuple(allowed)
    # A multipart field without a name arrives under the key None: it is named '' here.
    unknown = sorted(str(k or "") for k in set(given) - set(allowed))
    if unknown:
        names = ", ".join(shown(k, 40) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise BadRequest(f"unknown {noun}(s) {names}; expected {', '.join(allowed)}")


def parse_strings(values: Mapping[str, str]) -> dict:
    """{option name: value} from strings (form fields, query string, command line)."""
    refuse_unknown(values, (f.name for f in OPTIONS), "option")
    return {f.name: f.from_string(values.get(f.name)) for f in OPTIONS}
