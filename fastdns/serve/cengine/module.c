/* fastdns.serve._cengine: the compiled UDP datapath (docs/datapath.md).
 *
 * One extension module, built from the C files in this directory:
 *   module.c  this file: the module and its functions
 *   engine.c  the Engine type: recvmmsg/sendmmsg, ready replies, upcalls (engine.h)
 *   forms.c   the ready-reply table (forms.h)
 *   sources.c the sources that pass the gate (sources.h)
 *   addr.c    socket addresses as Python tuples (addr.h)
 *   wire.c    the query parser and reply checks, pure C (wire.h)
 *   admission.c  the cache's admission (classify), pure C (admission.h)
 *   render.c  the client's reply to a relayed answer, pure C (render.h)
 *   relay.c   misses relayed to the upstream (relay.h); keys.c the cache's keys (keys.h)
 *   tally.c   the accounting of the answers the relay sends itself (tally.h)
 *   wirebind.c  their Python functions: parse_query, question_matches, reply_header,
 *               classify
 * Every read of packet bytes is bounds-checked; nothing here grows without a bound.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "engine.h"
#include "wirebind.h"

static PyMethodDef module_methods[] = {
    FD_WIRE_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cengine_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fastdns.serve._cengine",
    .m_doc = "The compiled UDP datapath of a fastdns worker.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__cengine(void) {
    PyObject *m = PyModule_Create(&cengine_module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "ABI", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (fd_engine_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
