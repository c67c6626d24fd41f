from array import array

def hash_spans(data: bytes | bytearray | memoryview,
               spans: bytes | bytearray | memoryview | array[int]) -> bytes: ...

def check_chunks(fd: int, spans: bytes | bytearray | memoryview | array[int],
                 ids: bytes | bytearray | memoryview, buf: bytearray | memoryview,
                 read_bytes: int) -> bytes: ...
