/* ckptmap.native.scan: one pass over an array's bits, without the GIL.
 *
 * max_magnitude_bits(addr, count, itemsize) -> int
 *   the largest (x & sign-less mask) over `count` contiguous 2- or 4-byte elements at `addr`: the largest bit
 *   pattern of the values' magnitudes. For an IEEE-like float format (float16, bfloat16, float32) a result under
 *   the exponent mask says every element is finite, so the caller (ckptmap.convert.count_nonfinite) counts NaN and
 *   Inf one by one only where it is not. numpy needs two passes and a scratch buffer for the same answer (a
 *   bitwise_and into the buffer, then its max): 13% of a 16 GB conversion's CPU samples (RESULTS, session 10).
 * The caller owns the memory and checks its extent; this only reads it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static uint16_t max16(const uint16_t *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    uint16_t best = 0;
#if defined(__SSE2__)
    /* masked to 15 bits, every value is a non-negative int16: the signed max is the unsigned one */
    const __m128i mask = _mm_set1_epi16(0x7fff);
    __m128i a = _mm_setzero_si128(), b = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        a = _mm_max_epi16(a, _mm_and_si128(_mm_loadu_si128((const __m128i *)(p + i)), mask));
        b = _mm_max_epi16(b, _mm_and_si128(_mm_loadu_si128((const __m128i *)(p + i + 8)), mask));
    }
    int16_t lanes[8];
    _mm_storeu_si128((__m128i *)lanes, _mm_max_epi16(a, b));
    for (int k = 0; k < 8; k++)
        if ((uint16_t)lanes[k] > best) best = (uint16_t)lanes[k];
#endif
    for (; i < n; i++) {
        uint16_t v = p[i] & 0x7fff;
        if (v > best) best = v;
    }
    return best;
}

static uint32_t max32(const uint32_t *p, Py_ssize_t n) {
    uint32_t best = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = p[i] & 0x7fffffffu;
        best = v > best ? v : best;
    }
    return best;
}

static PyObject *max_magnitude_bits(PyObject *self, PyObject *args) {
    unsigned long long addr;
    Py_ssize_t count;
    int itemsize;
    if (!PyArg_ParseTuple(args, "Kni", &addr, &count, &itemsize)) return NULL;
    if (itemsize != 2 && itemsize != 4) {
        PyErr_Format(PyExc_ValueError, "max_magnitude_bits: item size %d is not 2 or 4", itemsize);
        return NULL;
    }
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "max_magnitude_bits: negative count");
        return NULL;
    }
    unsigned long best;
    Py_BEGIN_ALLOW_THREADS
    if (itemsize == 2)
        best = max16((const uint16_t *)(uintptr_t)addr, count);
    else
        best = max32((const uint32_t *)(uintptr_t)addr, count);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(best);
}

static PyMethodDef methods[] = {
    {"max_magnitude_bits", max_magnitude_bits, METH_VARARGS,
     "max_magnitude_bits(addr, count, itemsize): the largest (x & sign-less mask) over count contiguous 2- or "
     "4-byte elements."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit_scan(void) { return PyModule_Create(&module); }
