from array import array

def hash_spans(data: bytes | bytearray | memoryview,
               spans: bytes | bytearray | memoryview | array[int]) -> bytes: ...
