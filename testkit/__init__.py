"""Helpers shared by tests/, bench/ and training/: drawn digits and numbers and image bytes (testkit.drawing), ink
as a phone photo of it (testkit.photo), the service on a free loopback port (testkit.service). Light imports
only: no app/, no torch."""

from testkit.drawing import STROKES, digit_paths, drawn_digit, drawn_number, number_paths, png_bytes, render_canvas
from testkit.photo import phone_photo
from testkit.service import Service, ServiceFailed, free_port, running_service

__all__ = ["STROKES", "Service", "ServiceFailed", "digit_paths", "drawn_digit", "drawn_number", "free_port",
           "number_paths", "phone_photo", "png_bytes", "render_canvas", "running_service"]
