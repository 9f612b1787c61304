"""Operand layouts for the tensor-core matmul tests (the host emulation and the GPU cases),
and the rule by which rung 4 stages an operand, as the tests state it."""


def round8(x):
    return (x + 7) // 8 * 8


def layout(kind, batch, rows, cols):
    """(batch stride, row stride, column stride, offset, buffer size) of a (batch, rows, cols)
    operand laid out as `kind`; all strides in elements."""
    if kind == "compact":
        return rows * cols, cols, 1, 0, batch * rows * cols
    if kind == "transposed":  # unit stride down the rows
        return rows * cols, 1, rows, 0, batch * rows * cols
    if kind == "pitched":  # rows padded to a multiple of 8 plus 8, starting 8 elements in
        pitch = round8(cols) + 8
        return rows * pitch, pitch, 1, 8, 8 + batch * rows * pitch
    if kind == "pitched_transposed":
        pitch = round8(rows) + 16
        return cols * pitch, 1, pitch, 16, 16 + batch * cols * pitch
    if kind == "broadcast":  # one matrix for every batch
        return 0, cols, 1, 0, rows * cols
    if kind == "misaligned":  # compact rows of a multiple-of-8 pitch, starting 3 elements in
        pitch = round8(cols)
        return rows * pitch, pitch, 1, 3, 3 + batch * rows * pitch
    if kind == "flipped":  # rows in reverse order
        return rows * cols, -cols, 1, (rows - 1) * cols, batch * rows * cols
    if kind == "every_other":  # no unit stride at all
        return 2 * rows * 2 * cols, 2 * cols * 2, 2, 0, batch * 2 * rows * 2 * cols
    raise ValueError(kind)


def stageable(kind, batch, rows, cols):
    """The rule rung 4 states: an operand is copied in 16-byte chunks when its first element
    is 16-byte aligned, its unit stride runs along k or along its other dimension, and its
    other strides (the batch stride too, when batch > 1) are multiples of 8 halves; a size-1
    dimension's stride never matters."""
    sb, sr, sc, off, _ = layout(kind, batch, rows, cols)
    if off % 8 or (batch > 1 and sb % 8):
        return False
    row_unit, col_unit = rows == 1 or sr == 1, cols == 1 or sc == 1
    return (col_unit and (rows == 1 or sr % 8 == 0)) or (row_unit and (cols == 1 or sc % 8 == 0))
