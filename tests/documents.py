"""Test documents about a city that exists only here, so a model can know its facts only from
them, and a minimal PDF writer for them."""

from __future__ import annotations

HISTORY_MD = """# Velmora

Velmora is a coastal city on the estuary of the river Sarn. Its old town sits on a hill
above the harbour, and its streets are paved with pale green stone from the Oskar quarry.

## The Amberline Bridge

The Amberline Bridge links the old town to the harbour district. It was designed by the
engineer Tessa Quorin and opened in 1872. The bridge has nine arches and is lit by amber
lamps every night.

## Government

Velmora is governed by a council of eleven members elected every four years. The council
meets in the Glass Hall on the first Monday of each month.
"""

FOOD_TXT = """Food in Velmora

The signature dish of Velmora is smoked eel with juniper butter. It is served at the Lantern
Market every Thursday evening, where fishermen sell their catch straight from the boats.

Bakers in Velmora make a dark rye bread called morrowloaf, baked overnight in stone ovens.
Visitors often buy it with salted plum jam.
"""

TRANSPORT_LINES = [
    "Transport in Velmora",
    "The tram network of Velmora has seven lines.",
    "The blue line runs from the central station to the airport in 25 minutes.",
    "Trams run every six minutes during the day.",
]

TRANSPORT_PDF_NAME = "transport.pdf"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with each line as a line of Helvetica text."""
    shown = " ".join(f"({_escape(line)}) Tj T*" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        " /Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return out


CITY_FILES = {
    "history.md": HISTORY_MD.encode(),
    "food.txt": FOOD_TXT.encode(),
    TRANSPORT_PDF_NAME: make_pdf(TRANSPORT_LINES),
}
