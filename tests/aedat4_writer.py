"""A minimal AEDAT 4.0 writer for tests: one uncompressed polarity-event stream, no data table.

Written from the format's description (iniVation's AEDAT 4.0 page and the DV flatbuffer schemas),
encoded by hand with `struct` so the tests need no flatbuffers package. The file is:

    "#!AER-DAT4.0\\r\\n"                        version line, 14 bytes
    IOHeader                                   size-prefixed flatbuffer, file identifier "IOHE"
    packets: int32 stream id, int32 size,      PacketHeader, 8 bytes, little-endian
             EventPacket                       size-prefixed flatbuffer, file identifier "EVTS"

IOHeader table fields, in schema order: compression (int32 enum, 0 = none), dataTablePosition
(int64; -1 = no FileDataTable after the packets, readers walk the packets), infoNode (string: the
XML that names each output stream, its typeIdentifier and, for events, the sensor's sizeX/sizeY).
EventPacket table: one field, a vector of Event structs {t: int64 (Unix time in us), x: int16,
y: int16, on: bool}, 13 bytes of members padded to 16 (struct alignment 8).

Flatbuffer conventions used: a size-prefixed buffer starts with a uint32 byte count of the rest;
then the uint32 offset of the root table (relative to where it is stored) and the 4-byte file
identifier. A table starts with an int32 offset back to its vtable (vtable = table - value); the
vtable holds uint16 vtable size, table size, and one uint16 offset per field from the table start.
References (strings, vectors) are uint32 offsets forward from where they are stored; a vector or
string is a uint32 element count then the elements (a string also ends in a NUL byte). Every
scalar sits at a multiple of its size counted from the start of the size-prefixed buffer; the
struct vector's elements start at a multiple of 8. Everything here is laid out front to back.
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"#!AER-DAT4.0\r\n"

# Event struct as stored: 16 bytes, little-endian, 3 bytes of padding after the polarity byte
EVENT_STRUCT = np.dtype({"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"],
                         "offsets": [0, 8, 10, 12], "itemsize": 16})


def info_node(width: int = 128, height: int = 128, stream_id: int = 0) -> str:
    """The IOHeader's XML: one output stream of polarity events from a width x height sensor."""
    return (f'<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
            f'<node name="{stream_id}" path="/mainloop/Recorder/outInfo/{stream_id}/">'
            f'<attr key="compression" type="string">NONE</attr>'
            f'<attr key="originalOutputName" type="string">events</attr>'
            f'<attr key="typeIdentifier" type="string">EVTS</attr>'
            f'<node name="info" path="/mainloop/Recorder/outInfo/{stream_id}/info/">'
            f'<attr key="sizeX" type="int">{width}</attr>'
            f'<attr key="sizeY" type="int">{height}</attr>'
            f'<attr key="source" type="string">qsnn test writer</attr>'
            f'</node></node></node></dv>')


def _pad8(buf: bytearray) -> bytes:
    buf += b"\x00" * (-len(buf) % 8)
    struct.pack_into("<I", buf, 0, len(buf) - 4)  # the size prefix counts what follows it
    return bytes(buf)


def ioheader(xml: str, data_table_position: int = -1, compression: int = 0) -> bytes:
    """The size-prefixed IOHeader flatbuffer (every field written, defaults included)."""
    text = xml.encode("utf-8")
    buf = bytearray(struct.pack("<II4s", 0, 24 - 4, b"IOHE"))  # size (filled last), root -> 24
    buf += struct.pack("<HHHHH", 10, 20, 4, 8, 16) + b"\x00\x00"  # vtable at 12, 3 fields
    buf += struct.pack("<iiqI", 24 - 12, compression, data_table_position, 44 - 40)  # table at 24
    buf += struct.pack("<I", len(text)) + text + b"\x00"  # the string at 44
    return _pad8(buf)


def event_packet(t, x, y, on) -> bytes:
    """The size-prefixed EventPacket flatbuffer holding these events in this order."""
    ev = np.zeros(len(t), dtype=EVENT_STRUCT)
    ev["t"], ev["x"], ev["y"], ev["on"] = t, x, y, on
    buf = bytearray(struct.pack("<II4s", 0, 20 - 4, b"EVTS"))  # size (filled last), root -> 20
    buf += struct.pack("<HHH", 6, 8, 4) + b"\x00\x00"  # vtable at 12, 1 field
    buf += struct.pack("<iI", 20 - 12, 28 - 24)  # table at 20; its vector at 28
    buf += struct.pack("<I", len(ev)) + ev.tobytes()  # count at 28, elements from 32
    return _pad8(buf)


def write_aedat4(path, t, x, y, on, *, packet_size: int = 64, width: int = 128, height: int = 128,
                 stream_id: int = 0) -> int:
    """Write the events (sorted by t, as a camera does) in packets of at most `packet_size`.

    t: int64 microseconds; x, y: pixel coordinates (< width, height); on: polarity (bool).
    Returns the number of packets written.
    """
    t, x, y, on = (np.asarray(a) for a in (t, x, y, on))
    if not (len(t) == len(x) == len(y) == len(on)):
        raise ValueError("t, x, y, on must have the same length")
    out = bytearray(MAGIC + ioheader(info_node(width, height, stream_id)))
    starts = range(0, len(t), packet_size)
    for s in starts:
        body = event_packet(t[s:s + packet_size], x[s:s + packet_size], y[s:s + packet_size],
                            on[s:s + packet_size])
        out += struct.pack("<ii", stream_id, len(body)) + body
    with open(path, "wb") as fh:
        fh.write(out)
    return len(starts)
