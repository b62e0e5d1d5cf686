/* The Engine type: one worker's UDP socket read and written by C (engine.c). */
#ifndef FASTDNS_CENGINE_ENGINE_H
#define FASTDNS_CENGINE_ENGINE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Add the Engine type and its constants to the module; -1 with an error set. */
int fd_engine_register(PyObject *module);

#endif
