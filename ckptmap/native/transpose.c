/* ckptmap.native.transpose: dst = src.T for 2-D blocks of 1-, 2-, 4- or 8-byte elements, without the GIL.
 *
 * transpose2d(dst_addr, src_addr, rows, cols, dst_row_stride, src_row_stride, itemsize, scan=False)
 *   src: rows x cols elements, each row contiguous, rows src_row_stride bytes apart;
 *   dst: cols x rows elements, each row contiguous, rows dst_row_stride bytes apart;
 *   dst[j][i] = src[i][j]. Returns None, or with scan=True (2- and 4-byte elements) the largest
 *   (x & sign-less mask) over src, as ckptmap.native.scan's max_magnitude_bits gives it, taken from the
 *   registers the transpose has loaded anyway: the NaN/Inf check then costs no second pass over memory.
 * The caller (ckptmap.array_copy) owns both arrays and checks their extents; this only moves bytes.
 *
 * The work goes in BLOCK x BLOCK tiles that stay in L1; 2-byte elements (bfloat16, float16) go through SSE2
 * 8x8 register transposes and 4-byte ones through 4x4 where the CPU has SSE2, every other case through plain
 * loops. numpy's strided copy moves one element per step: ~0.9 GB/s on this project's VM for bfloat16 tiles,
 * against ~1.8 GB/s here (benchmarks/RESULTS.md, session 10).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK 64

#define PLAIN_BLOCK(T)                                                                                  \
    static void plain_##T(const char *s, char *d, Py_ssize_t sld, Py_ssize_t dld, Py_ssize_t r,       \
                          Py_ssize_t c) {                                                              \
        for (Py_ssize_t j = 0; j < c; j++) {                                                           \
            T *drow = (T *)(d + j * dld);                                                              \
            for (Py_ssize_t i = 0; i < r; i++) drow[i] = *(const T *)(s + i * sld + j * sizeof(T));    \
        }                                                                                              \
    }
PLAIN_BLOCK(uint8_t)
PLAIN_BLOCK(uint16_t)
PLAIN_BLOCK(uint32_t)
PLAIN_BLOCK(uint64_t)

/* the largest sign-less bit pattern over an r x c region of src (2- or 4-byte elements), for the edges the
 * register blocks leave */
static uint32_t scan_plain(const char *s, Py_ssize_t sld, Py_ssize_t r, Py_ssize_t c, int itemsize) {
    uint32_t best = 0;
    for (Py_ssize_t i = 0; i < r; i++) {
        const char *row = s + i * sld;
        for (Py_ssize_t j = 0; j < c; j++) {
            uint32_t v = itemsize == 2 ? (uint32_t)(((const uint16_t *)row)[j] & 0x7fffu)
                                       : ((const uint32_t *)row)[j] & 0x7fffffffu;
            best = v > best ? v : best;
        }
    }
    return best;
}

#if defined(__SSE2__)
#define LD(p) _mm_loadu_si128((const __m128i *)(p))
#define ST(p, v) _mm_storeu_si128((__m128i *)(p), (v))

/* acc = max(acc, x & mask) per lane, for lanes whose masked values are non-negative signed integers */
static inline __m128i max16m(__m128i acc, __m128i x) {
    return _mm_max_epi16(acc, _mm_and_si128(x, _mm_set1_epi16(0x7fff)));
}
static inline __m128i max32m(__m128i acc, __m128i x) { /* SSE2 has no 32-bit max: compare and select */
    __m128i v = _mm_and_si128(x, _mm_set1_epi32(0x7fffffff)), gt = _mm_cmpgt_epi32(v, acc);
    return _mm_or_si128(_mm_and_si128(gt, v), _mm_andnot_si128(gt, acc));
}

/* one 8x8 block of 16-bit elements; with acc, its source elements' sign-less maximum folded in */
static inline void t8x8_16(const char *s, char *d, Py_ssize_t sld, Py_ssize_t dld, __m128i *acc) {
    __m128i a0 = LD(s), a1 = LD(s + sld), a2 = LD(s + 2 * sld), a3 = LD(s + 3 * sld);
    __m128i a4 = LD(s + 4 * sld), a5 = LD(s + 5 * sld), a6 = LD(s + 6 * sld), a7 = LD(s + 7 * sld);
    if (acc) {
        __m128i m = max16m(max16m(max16m(max16m(*acc, a0), a1), a2), a3);
        *acc = max16m(max16m(max16m(max16m(m, a4), a5), a6), a7);
    }
    __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
    __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
    __m128i b4 = _mm_unpacklo_epi16(a4, a5), b5 = _mm_unpackhi_epi16(a4, a5);
    __m128i b6 = _mm_unpacklo_epi16(a6, a7), b7 = _mm_unpackhi_epi16(a6, a7);
    __m128i c0 = _mm_unpacklo_epi32(b0, b2), c1 = _mm_unpackhi_epi32(b0, b2);
    __m128i c2 = _mm_unpacklo_epi32(b1, b3), c3 = _mm_unpackhi_epi32(b1, b3);
    __m128i c4 = _mm_unpacklo_epi32(b4, b6), c5 = _mm_unpackhi_epi32(b4, b6);
    __m128i c6 = _mm_unpacklo_epi32(b5, b7), c7 = _mm_unpackhi_epi32(b5, b7);
    ST(d, _mm_unpacklo_epi64(c0, c4));
    ST(d + dld, _mm_unpackhi_epi64(c0, c4));
    ST(d + 2 * dld, _mm_unpacklo_epi64(c1, c5));
    ST(d + 3 * dld, _mm_unpackhi_epi64(c1, c5));
    ST(d + 4 * dld, _mm_unpacklo_epi64(c2, c6));
    ST(d + 5 * dld, _mm_unpackhi_epi64(c2, c6));
    ST(d + 6 * dld, _mm_unpacklo_epi64(c3, c7));
    ST(d + 7 * dld, _mm_unpackhi_epi64(c3, c7));
}

/* one 4x4 block of 32-bit elements; with acc, as t8x8_16 */
static inline void t4x4_32(const char *s, char *d, Py_ssize_t sld, Py_ssize_t dld, __m128i *acc) {
    __m128i a0 = LD(s), a1 = LD(s + sld), a2 = LD(s + 2 * sld), a3 = LD(s + 3 * sld);
    if (acc) *acc = max32m(max32m(max32m(max32m(*acc, a0), a1), a2), a3);
    __m128i b0 = _mm_unpacklo_epi32(a0, a1), b1 = _mm_unpackhi_epi32(a0, a1);
    __m128i b2 = _mm_unpacklo_epi32(a2, a3), b3 = _mm_unpackhi_epi32(a2, a3);
    ST(d, _mm_unpacklo_epi64(b0, b2));
    ST(d + dld, _mm_unpackhi_epi64(b0, b2));
    ST(d + 2 * dld, _mm_unpacklo_epi64(b1, b3));
    ST(d + 3 * dld, _mm_unpackhi_epi64(b1, b3));
}
#endif

static void plain(const char *s, char *d, Py_ssize_t sld, Py_ssize_t dld, Py_ssize_t r, Py_ssize_t c,
                  int itemsize) {
    switch (itemsize) {
        case 1: plain_uint8_t(s, d, sld, dld, r, c); break;
        case 2: plain_uint16_t(s, d, sld, dld, r, c); break;
        case 4: plain_uint32_t(s, d, sld, dld, r, c); break;
        default: plain_uint64_t(s, d, sld, dld, r, c); break;
    }
}

/* an r x c region the register blocks leave: plain loops, and with `best` its sign-less maximum folded in */
static void edge(const char *s, char *d, Py_ssize_t sld, Py_ssize_t dld, Py_ssize_t r, Py_ssize_t c,
                 int itemsize, uint32_t *best) {
    plain(s, d, sld, dld, r, c, itemsize);
    if (best) {
        uint32_t v = scan_plain(s, sld, r, c, itemsize);
        *best = v > *best ? v : *best;
    }
}

/* one tile of r x c elements (r, c <= BLOCK): register blocks where they fit, plain loops for the edges; with
 * `best` (2- and 4-byte elements), the tile's sign-less maximum folded into *best */
static void tile(const char *s, char *d, Py_ssize_t sld, Py_ssize_t dld, Py_ssize_t r, Py_ssize_t c,
                 int itemsize, uint32_t *best) {
    Py_ssize_t rb = 0, cb = 0; /* the rows and columns done in register blocks */
#if defined(__SSE2__)
    __m128i acc = _mm_setzero_si128(), *pacc = best ? &acc : NULL;
    if (itemsize == 2) {
        rb = r - r % 8, cb = c - c % 8;
        for (Py_ssize_t i = 0; i < rb; i += 8)
            for (Py_ssize_t j = 0; j < cb; j += 8) t8x8_16(s + i * sld + 2 * j, d + j * dld + 2 * i, sld, dld, pacc);
    } else if (itemsize == 4) {
        rb = r - r % 4, cb = c - c % 4;
        for (Py_ssize_t i = 0; i < rb; i += 4)
            for (Py_ssize_t j = 0; j < cb; j += 4) t4x4_32(s + i * sld + 4 * j, d + j * dld + 4 * i, sld, dld, pacc);
    }
    if (best && rb && cb) { /* the register blocks' lanes: eight 16-bit or four 32-bit maxima */
        uint32_t lanes[4];
        _mm_storeu_si128((__m128i *)lanes, acc);
        for (int k = 0; k < 4; k++) {
            uint32_t lo = itemsize == 2 ? lanes[k] & 0xffffu : lanes[k], hi = itemsize == 2 ? lanes[k] >> 16 : 0;
            *best = lo > *best ? lo : *best;
            *best = hi > *best ? hi : *best;
        }
    }
#endif
    if (rb == 0 || cb == 0) {
        edge(s, d, sld, dld, r, c, itemsize, best);
        return;
    }
    if (cb < c) /* the last columns, every row */
        edge(s + cb * itemsize, d + cb * dld, sld, dld, r, c - cb, itemsize, best);
    if (rb < r) /* the last rows, the columns the blocks covered */
        edge(s + rb * sld, d + rb * itemsize, sld, dld, r - rb, cb, itemsize, best);
}

static PyObject *transpose2d(PyObject *self, PyObject *args) {
    unsigned long long dst_addr, src_addr;
    Py_ssize_t rows, cols, dld, sld;
    int itemsize, scan = 0;
    if (!PyArg_ParseTuple(args, "KKnnnni|p", &dst_addr, &src_addr, &rows, &cols, &dld, &sld, &itemsize, &scan))
        return NULL;
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) {
        PyErr_Format(PyExc_ValueError, "transpose2d: item size %d is not 1, 2, 4 or 8", itemsize);
        return NULL;
    }
    if (scan && itemsize != 2 && itemsize != 4) {
        PyErr_Format(PyExc_ValueError, "transpose2d: scan=True needs 2- or 4-byte elements, not %d", itemsize);
        return NULL;
    }
    if (rows < 0 || cols < 0) {
        PyErr_SetString(PyExc_ValueError, "transpose2d: negative extent");
        return NULL;
    }
    const char *src = (const char *)(uintptr_t)src_addr;
    char *dst = (char *)(uintptr_t)dst_addr;
    uint32_t best = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i0 = 0; i0 < rows; i0 += BLOCK) {
        Py_ssize_t r = rows - i0 < BLOCK ? rows - i0 : BLOCK;
        for (Py_ssize_t j0 = 0; j0 < cols; j0 += BLOCK) {
            Py_ssize_t c = cols - j0 < BLOCK ? cols - j0 : BLOCK;
            tile(src + i0 * sld + j0 * itemsize, dst + j0 * dld + i0 * itemsize, sld, dld, r, c, itemsize,
                 scan ? &best : NULL);
        }
    }
    Py_END_ALLOW_THREADS
    if (scan) return PyLong_FromUnsignedLong(best);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"transpose2d", transpose2d, METH_VARARGS,
     "transpose2d(dst_addr, src_addr, rows, cols, dst_row_stride, src_row_stride, itemsize, scan=False): "
     "dst[j][i] = src[i][j] for a rows x cols src, both with contiguous rows (strides in bytes); with scan=True "
     "(2- or 4-byte elements) returns the largest sign-less bit pattern of src."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "transpose", NULL, -1, methods};

PyMODINIT_FUNC PyInit_transpose(void) { return PyModule_Create(&module); }
